"""Loop benchmark: the engine's own cost per improvement iteration.

    python bench/bench_loop.py [--iterations 200] [--tiny-iterations 6]

1. A zero-cost scripted model (answers from a table): everything measured is engine overhead
   (prompt building, scoring, recording with fsync, reducing, blob writes): iterations/s and
   events/s. Every iteration is whole: a Feedback Agent made for the benchmark pulls a lever
   each time, alternating a scaffold patch and an adapter.
2. The tiny model training a LoRA adapter every iteration: the time of one LoRA iteration, split
   into model time (generation + LoRA training, measured around the model's own calls) and engine
   time (the rest); the scripted overhead per iteration is reported as a share of it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sia_engine.domain.events import FeedbackVerdict, TrainingPlan
from sia_engine.domain.scaffold import PatchOp
from sia_engine.loop.feedback.rule import Context, Decision
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.loop.task import Task
from sia_engine.models.protocol import LoraSettings, Request, ScriptedModel
from store import BlobStore, MemoryEventLog, Store
from tasks import get_task

TASK = get_task("arith")
GOLD = {e.input: e.gold for s in ("train", "val") for e in TASK.episodes(s)}


def zero_cost(request: Request, adapter: str | None) -> str:
    """Wrong on a third of the questions whatever the version (the answers vary with the adapter)."""
    q = request.messages[-1].content
    gold = GOLD.get(q, "0")
    return str(int(gold) + 1) if int(hashlib.sha256((q + (adapter or "")).encode()).hexdigest(), 16) % 3 == 0 else gold


class EveryIteration:
    """A Feedback Agent that pulls a lever every iteration, so that every timed iteration is a
    whole one (rollouts, verdict, lever, evaluation, decision): the weights lever (training on
    the iteration's trajectories with gold answers) when ``weights_only``, else alternating with
    a scaffold patch that always yields a new version. The rule policy would stop pulling levers
    once its candidates keep being rejected, and the benchmark would then time idle iterations."""

    name = "bench"

    def __init__(self, *, weights_only: bool) -> None:
        self.weights_only = weights_only

    def decide(self, ctx: Context, task: Task) -> Decision:
        ids = tuple(t.trajectory_id for t in ctx.trajectories)
        if self.weights_only or ctx.iteration % 2:
            return Decision((FeedbackVerdict(version_id=ctx.head.version_id, lever="weights", rationale="bench", policy=self.name,
                                             training_plan=TrainingPlan(ids, "gold")),))
        ops = (PatchOp("replace", "/system_prompt", f"You are a careful assistant (attempt {ctx.iteration})."),)
        return Decision((FeedbackVerdict(version_id=ctx.head.version_id, lever="scaffold", rationale="bench", policy=self.name, patch=ops),))


class Timed:
    """Wraps a model and adds up the seconds spent inside its calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.ref = inner.ref
        self.trains_weights = inner.trains_weights
        self.seconds = 0.0

    def _timed(self, fn: Any, *a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            self.seconds += time.perf_counter() - t

    def generate(self, requests: Any) -> Any:
        return self._timed(self.inner.generate, requests)

    def set_adapter(self, adapter: Any) -> None:
        self._timed(self.inner.set_adapter, adapter)

    def train_adapter(self, *a: Any, **k: Any) -> Any:
        return self._timed(self.inner.train_adapter, *a, **k)


def _store(tmp: Path, name: str, memory: bool) -> Store:
    if memory:  # the in-memory twin of the log: engine work without DuckDB's commits
        (tmp / name).mkdir(parents=True, exist_ok=True)
        return Store(tmp / name, MemoryEventLog(), BlobStore(tmp / name / "blobs"))  # type: ignore[arg-type]
    return Store.create(tmp / name)


def scripted_run(n: int, tmp: Path, memory: bool = False) -> tuple[float, int, float]:
    model = Timed(ScriptedModel(zero_cost, name="zero-cost"))
    with _store(tmp, "scripted-mem" if memory else "scripted", memory) as s:
        assert s.log.count() == 0
        config = LoopConfig(task="arith", iterations=n, train_episodes=4, val_episodes=4, lora=LoraSettings(steps=1), samples=1)
        t = time.perf_counter()
        Loop(s, task=TASK, model=model, feedback=EveryIteration(weights_only=False), config=config).run()
        dt = time.perf_counter() - t
        events = s.log.count()
    return dt, events, model.seconds


def tiny_run(n: int, tmp: Path, memory: bool = False) -> tuple[float, float, int]:
    from sia_engine.models.presets import tiny_model

    model = Timed(tiny_model())
    with _store(tmp, "tiny-mem" if memory else "tiny", memory) as s:
        config = LoopConfig(task="arith", iterations=n, levers=("weights",), train_episodes=8, val_episodes=8, lora=LoraSettings(steps=8, batch_size=4), samples=1)
        t = time.perf_counter()
        Loop(s, task=TASK, model=model, feedback=EveryIteration(weights_only=True), config=config).run()
        dt = time.perf_counter() - t
        events = s.log.count()
    return dt, model.seconds, events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--tiny-iterations", type=int, default=6)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        scripted_run(3, tmp / "warm")  # first calls import lazily (DuckDB's Arrow path, peft, ...)
        tiny_run(1, tmp / "warm")
        n, m = args.iterations, args.tiny_iterations
        for memory in (False, True):
            where = "in-memory log (no persistence)" if memory else "DuckDB file store"
            dt, events, model_s = scripted_run(n, tmp, memory)
            per_it = (dt - model_s) / n
            print(f"scripted zero-cost model, {n} iterations (4 train + 4 val episodes each), {where}:")
            print(f"  {n / dt:8.1f} iterations/s   {events / dt:9.0f} events/s   {events / n:.1f} events/iteration")
            print(f"  engine overhead {per_it * 1e3:.2f} ms/iteration (model calls took {model_s * 1e3:.1f} ms in all)")
            tdt, tmodel, tevents = tiny_run(m, tmp, memory)
            engine = tdt - tmodel
            print(f"tiny model, weights lever, {m} iterations (8 train + 8 val episodes, 8 LoRA steps of batch 4), {where}:")
            print(f"  {tdt / m * 1e3:8.1f} ms/iteration: model {tmodel / m * 1e3:.1f} ms, engine {engine / m * 1e3:.1f} ms "
                  f"= {engine / tdt:.1%} of the iteration ({tevents} events)")
            print(f"  scripted engine overhead per iteration = {per_it / (tdt / m):.1%} of one tiny-model LoRA iteration")

if __name__ == "__main__":
    main()
