"""Batched steps (``sia_engine.loop.batches``): batches planned as a pure function of the step and
recorded with each output, a step killed mid-batch resumes to the very same events, a batch that
comes out different on resume is refused, and scoring in a pool records what a serial run does."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest

from replay.reexecute import reexecute
from sia_engine.domain.events import ActionTaken, decode_envelope
from sia_engine.domain.scaffold import Decoding
from sia_engine.errors import GenerationMismatch, RunMismatch
from sia_engine.loop.batches import plan_batches
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.loop.task import Episode, Score
from sia_engine.models.hf import HFModel
from sia_engine.models.presets import tiny_model
from sia_engine.models.protocol import LoraSettings, Message, Request
from store import Store
from tests.loop_helpers import TASK, scripted, sometimes_wrong

ROOT = Path(__file__).resolve().parents[3]


def _r(n: int, text: str = "q", t: float = 0.7) -> Request:
    return Request((Message("user", text),), Decoding(temperature=t), seed=0, n=n)


def test_batches_are_cut_by_prompt_length_then_order_within_the_row_budget() -> None:
    def length(r: Request) -> int:
        return len(r.messages[0].content)

    reqs = [_r(4), _r(4), _r(4), _r(4, t=0.0), _r(4)]
    assert plan_batches(reqs, 8, length) == [[0, 1], [2, 3], [4]]  # lengths tie: request order; a greedy request is one row
    assert plan_batches(reqs, 9, length) == [[0, 1], [2, 3, 4]]
    mixed = [_r(4, "a" * 30), _r(4, "a" * 10), _r(2, "a" * 30), _r(1, "a" * 10, t=0.0), _r(4, "a" * 20)]
    assert plan_batches(mixed, 8, length) == [[1, 3], [4, 0], [2]]  # by length (10, 10, 20, 30, 30), ties in order
    assert plan_batches(mixed, 0, length) == [[0], [1], [2], [3], [4]]  # serial: one request per call, in order
    assert plan_batches([_r(40)], 8, length) == [[0]]  # larger than a batch: a batch of its own
    assert plan_batches(mixed, 8, length) == plan_batches(list(mixed), 8, length)  # a pure function of the step


CFG = LoopConfig(task="arith", iterations=2, train_episodes=4, val_episodes=3, samples=2, levers=("weights",),
                 lora=LoraSettings(steps=2, lr=1e-2), batch_rows=4)


def _ids(s: Store) -> list[str]:
    return [e.id for e in s.log.read("main")]


def test_outputs_record_their_batch_and_row_and_reexecute_identically(tmp_path: Path) -> None:
    with Store.create(tmp_path) as s:
        Loop(s, task=TASK, model=tiny_model(), feedback=RulePolicy(), config=CFG).run()
        gens = [decode_envelope(e) for e in s.log.read("main", kinds=["action_taken"])]
        inputs = [g.generate_inputs() for g in gens if isinstance(g, ActionTaken) and g.is_generation]
        assert inputs and all(i.batch is not None and i.row is not None for i in inputs)
        batches: dict[str, list[int]] = {}
        for i in inputs:
            batches.setdefault(str(i.batch), []).append(i.row or 0)
        assert all(sorted(rows) == list(range(len(rows))) and len(rows) <= 4 for rows in batches.values())
        report = reexecute(s, "main", tiny_model())
    assert report.outputs == len(inputs) and report.identical == report.outputs and report.skipped == 0


class Crash(Exception):
    pass


class CrashingTask:
    """arith, raising ``Crash`` on its ``at``-th score (a kill between two recorded outputs)."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    def __getattr__(self, k: str) -> object:
        return getattr(TASK, k)

    def score(self, ep: Episode, output: str) -> Score:
        self.calls += 1
        if self.calls == self.at:
            raise Crash
        return TASK.score(ep, output)


@pytest.mark.parametrize("at", [2, 6, 11, 19])  # inside the first eval, the rollouts' batches, the candidate's eval
def test_a_step_interrupted_mid_batch_resumes_to_the_very_same_events(tmp_path: Path, at: int) -> None:
    with Store.create(tmp_path / "clean") as s:
        Loop(s, task=TASK, model=tiny_model(), feedback=RulePolicy(), config=CFG).run()
        want = _ids(s)
    with Store.create(tmp_path / "crashy") as s:
        with pytest.raises(Crash):
            Loop(s, task=CrashingTask(at), model=tiny_model(), feedback=RulePolicy(), config=CFG).run()  # type: ignore[arg-type]
        partial = _ids(s)
        Loop(s, task=TASK, model=tiny_model(), feedback=RulePolicy(), config=CFG).run()
        got = _ids(s)
    assert got[: len(partial)] == partial and got == want


class Drifting(HFModel):
    """A model that answers one output differently once it is asked again (other hardware, say)."""

    def generate(self, requests):  # type: ignore[no-untyped-def]
        gens = super().generate(requests)
        return [msgspec.structs.replace(gens[0], text=gens[0].text + "!"), *gens[1:]]


def test_a_batch_that_comes_out_different_on_resume_is_refused_and_nothing_is_recorded(tmp_path: Path) -> None:
    with Store.create(tmp_path) as s:
        with pytest.raises(Crash):
            Loop(s, task=CrashingTask(3), model=tiny_model(), feedback=RulePolicy(), config=CFG).run()  # type: ignore[arg-type]
        before = _ids(s)
        m = tiny_model()
        m.__class__ = Drifting
        with pytest.raises(GenerationMismatch) as err:
            Loop(s, task=TASK, model=m, feedback=RulePolicy(), config=CFG).run()
        assert _ids(s) == before
    assert err.value.field == "text" and "fork" in str(err.value)


def test_a_run_recorded_before_batching_resumes_only_with_batch_rows_0(tmp_path: Path) -> None:
    serial = msgspec.structs.replace(CFG, batch_rows=0, iterations=1, lora=msgspec.structs.replace(CFG.lora, packing=False))
    with Store.create(tmp_path) as s:
        Loop(s, task=TASK, model=tiny_model(), feedback=RulePolicy(), config=serial).run()
        run = Loop(s, task=TASK, model=tiny_model(), feedback=RulePolicy(), config=serial).hist.state.run
        assert run is not None and "batch_rows" not in run.config and "packing" not in run.config["lora"]  # as runs before this change
        with pytest.raises(RunMismatch, match="recorded before batched generation: resume it with --batch-rows 0"):
            Loop(s, task=TASK, model=tiny_model(), feedback=RulePolicy(), config=msgspec.structs.replace(CFG, iterations=2)).run()
        with pytest.raises(RunMismatch, match="recorded before packed training: resume it with --no-lora-packing"):
            Loop(s, task=TASK, model=tiny_model(), feedback=RulePolicy(), config=msgspec.structs.replace(CFG, batch_rows=0, iterations=2)).run()
        Loop(s, task=TASK, model=tiny_model(), feedback=RulePolicy(), config=msgspec.structs.replace(serial, iterations=2)).run()
        inputs = [decode_envelope(e) for e in s.log.read("main", kinds=["action_taken"])]
        assert all(i.generate_inputs().batch is None for i in inputs if isinstance(i, ActionTaken) and i.is_generation)
        assert reexecute(s, "main", tiny_model()).share_identical == 1.0  # asked again one at a time, as recorded


class SlowKeyedTask:
    """arith with a scorer cache keyed by the output, slow and jittery; ``concurrent`` says
    whether it may be scored on several threads. Records each call's thread."""

    def __init__(self, concurrent: bool) -> None:
        self.concurrent_scoring = concurrent
        self.cache: dict[str, Score] = {}
        self.threads: set[str] = set()
        self.rng = random.Random(0)
        self.lock = threading.Lock()

    def __getattr__(self, k: str) -> object:
        return getattr(TASK, k)

    def score_key(self, ep: Episode, output: str) -> str | None:
        return output.strip() or None

    def score(self, ep: Episode, output: str) -> Score:
        self.threads.add(threading.current_thread().name)
        key = self.score_key(ep, output)
        if key in self.cache:
            hit = self.cache[key]
            return msgspec.structs.replace(hit, metrics={**hit.metrics, "cached": 1.0})
        with self.lock:
            delay = self.rng.uniform(0, 0.01)
        time.sleep(delay)
        s = TASK.score(ep, output)
        if key is not None:
            self.cache[key] = s
        return s


def test_scoring_in_a_pool_records_what_a_serial_run_records(tmp_path: Path) -> None:
    cfg = LoopConfig(task="arith", iterations=3, train_episodes=6, val_episodes=4, samples=3, batch_rows=6)
    logs = []
    for name, concurrent in (("serial", False), ("pool", True)):
        task = SlowKeyedTask(concurrent)
        with Store.create(tmp_path / name) as s:
            Loop(s, task=task, model=scripted(sometimes_wrong), feedback=RulePolicy(), config=cfg).run()  # type: ignore[arg-type]
            logs.append(_ids(s))
            hits = sum(1 for e in s.log.read("main", kinds=["trajectory_recorded"]) if b'"cached"' in e.payload)
        assert hits > 0  # repeated answers were cache hits, in request order, in both runs
        assert any(t.startswith("sia-score") for t in task.threads) == concurrent
    assert logs[0] == logs[1]


CHILD = """
import os, signal, sys
sys.path.insert(0, {root!r})
from store import Store
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.models.presets import tiny_model
from sia_engine.models.protocol import LoraSettings
from tests.loop_helpers import TASK

class Killing:
    calls = 0
    def __getattr__(self, k):
        return getattr(TASK, k)
    def score(self, ep, output):
        Killing.calls += 1
        if Killing.calls == int(os.environ.get("SIA_TEST_KILL_AFTER", "0")):
            os.kill(os.getpid(), signal.SIGKILL)
        return TASK.score(ep, output)

with Store.create(sys.argv[1]) as s:
    Loop(s, task=Killing(), model=tiny_model(), feedback=RulePolicy(),
         config=LoopConfig(task="arith", iterations=2, train_episodes=4, val_episodes=3, samples=2, levers=("weights",),
                           lora=LoraSettings(steps=2, lr=1e-2), batch_rows=4)).run()
"""


def test_sigkill_mid_batch_then_resume_in_a_new_process_gives_the_same_events(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = CHILD.format(root=str(ROOT))
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "clean")], env=env, check=True, capture_output=True)
    with Store.open(tmp_path / "clean") as s:
        want = _ids(s)
    crashy = str(tmp_path / "crashy")
    killed = subprocess.run([sys.executable, "-c", script, crashy], env={**env, "SIA_TEST_KILL_AFTER": "7"}, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    with Store.open(crashy) as s:
        n = len(_ids(s))
    subprocess.run([sys.executable, "-c", script, crashy], env=env, check=True, capture_output=True)
    with Store.open(crashy) as s:
        assert 0 < n < len(want) and _ids(s) == want
