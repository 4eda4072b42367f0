"""Replay and branching benchmark: what an auditor waits for.

    python bench/bench_replay.py [--sizes 10000,1000000] [--store PATH]

(A script, not a module: it imports ``bench_log`` from its own folder, which Python puts first
on ``sys.path`` for a script; the rest comes from the installed project.)

1. Recorded replay against the run that produced the log: a tiny-model run on arith (4
   iterations, 2 samples per episode) timed live, then ``replay_recorded`` of its branch (the
   loop's own steps run against the recorded outputs, every event compared, every output
   re-scored), then ``--retrain`` (every adapter trained again, compared byte for byte), with
   the time per adapter. ``--main-job``: the README's main job (``sia run --task scrna-denoise
   --iterations 4``) on a fresh store, timed, then the same two replays of it. ``--store PATH``:
   a store's ``main`` branch, against the wall time its events span (``recorded_at``);
   ``--retrain`` retrains its adapters too.
2. For each size: a synthetic history (bench_log's generator) recorded through ``History``
   (a snapshot every 250 events: in full every 5,000, else a delta on the last full one); engine
   fork (``History.fork``, from the open history's head) plus its first append (median of 5); a
   cold fork at a random seq (``fork``: the state rebuilt from the log first) plus its append;
   the first rebuild in the process (it reads the snapshot index) on its own, then
   rebuild of the state at random seqs (p50, p95 of 20); and at 100k events or more, ``sia log``
   (the last 50 events) and ``sia log --limit 0 --json`` (all of them, streamed as one JSON array;
   built whole in memory, 1M events once ran this 24 GiB machine out of memory), with the
   process's peak RSS after it.

Targets (issue 8, kept by issue 21): recorded replay >= 50x faster than the run (the main job's);
``--retrain`` on the main job's store: every adapter identical, time per adapter printed; fork <= 5 ms and flat from 10 to 1M
events; rebuild at any seq of a 1M-event log p95 <= 10 ms; ``sia log`` of 100k events < 0.5 s.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_log import synthetic_events

from replay.recorded import replay_recorded
from sia_engine.domain.events import ActionTaken
from sia_engine.domain.history import History, fork, rebuild
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.models.protocol import LoraSettings
from store import Store


def replay_vs_run(tmp: Path) -> None:
    from sia_engine.models.presets import tiny_model
    from tasks import get_task

    task = get_task("arith")
    with Store.create(tmp / "run") as s:
        cfg = LoopConfig(task="arith", iterations=4, train_episodes=8, val_episodes=8, samples=2, lora=LoraSettings(steps=4))
        t0 = time.perf_counter()
        Loop(s, task=task, model=tiny_model(), feedback=RulePolicy(), config=cfg).run()
        run_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = replay_recorded(s, "main", task)
        first_s = time.perf_counter() - t0  # the first call also pays lazy imports (jsonpatch, the scorer's modules)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            r = replay_recorded(s, "main", task)
            times.append(time.perf_counter() - t0)
        rep_s = statistics.median(times)
        t0 = time.perf_counter()
        again = replay_recorded(s, "main", task, retrain=tiny_model())
        re_s = time.perf_counter() - t0
    print(f"tiny-model arith run: {r.n_events} events in {run_s:.2f} s; recorded replay {rep_s * 1000:.1f} ms "
          f"(median of 5; first call {first_s * 1000:.0f} ms with its imports; {r.outputs} outputs, {r.verdicts} verdicts, {r.adapters} adapters' "
          f"plans, {r.evaluations} evaluations, {r.decisions} decisions): {run_s / rep_s:.0f}x faster ({run_s / first_s:.0f}x counting the first call)")
    print(f"  --retrain: adapters re-derived {again.rederived} of {again.adapters} in {re_s:.2f} s; per adapter "
          + ", ".join(f"{x:.2f} s" for x in again.adapter_seconds))


def run_main_job(store: Path) -> float:
    """The README's main job on a fresh store; its wall time."""
    cmd = [sys.executable, "-m", "sia_engine.cli.main", "run", "--task", "scrna-denoise", "--iterations", "4", "--store", str(store), "--json"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"main job failed: {out.stderr[-2000:]}")
    return time.perf_counter() - t0


def store_replay(store_path: Path, run_s: float | None, retrain: bool) -> None:
    """A store's main branch: recorded replay against the run's wall time (given, or the span of
    its events), then (``retrain``) every adapter trained again."""
    from replay.reexecute import load_base_model
    from replay.stand_ins import AdapterDiffers
    from tasks import get_task

    with Store.open(store_path, read_only=True) as s:
        events = s.log.read("main")
        span = (events[-1].recorded_at - events[0].recorded_at).total_seconds()
        run = rebuild(s.log, "main")[0].run
        assert run is not None
        named = get_task(run.task)
        t0 = time.perf_counter()
        r = replay_recorded(s, "main", named)
        rep_s = time.perf_counter() - t0
        t0 = time.perf_counter()  # again in this process: the task's scorer cache holds every sandbox run, what is left is the loop's replay
        replay_recorded(s, "main", named)
        warm_s = time.perf_counter() - t0
        wall = run_s if run_s is not None else span
        what = "run" if run_s is not None else "events' span"
        print(f"{store_path}: {r.n_events} events; the {what} {wall:.0f} s; recorded replay {rep_s:.2f} s ({r.outputs} outputs replayed, "
              f"{r.rescored} re-scored, {r.verdicts} verdicts, {r.adapters} adapters' plans, {r.evaluations} evaluations, {r.decisions} decisions): "
              f"{wall / rep_s:.0f}x faster; again with the scorer's cache warm (the loop's replay without the sandbox runs) {warm_s:.2f} s: "
              f"{wall / warm_s:.0f}x")
        if not retrain:
            return
        model = load_base_model(run.base_model)
        t0 = time.perf_counter()
        try:
            again = replay_recorded(s, "main", named, retrain=model)
        except AdapterDiffers as e:
            print(f"  --retrain: NOT identical: {e}")
            return
        re_s = time.perf_counter() - t0
    print(f"  --retrain: adapters re-derived {again.rederived} of {again.adapters} (byte for byte) in {re_s:.0f} s; per adapter "
          + ", ".join(f"{x:.1f} s" for x in again.adapter_seconds))


# `sia log` in a process of its own that prints its peak RSS (KiB) on stderr as it exits
# (VmHWM, not getrusage: Linux carries ru_maxrss across exec from the forking parent, this one)
_LOG_ALL = """
import sys
from sia_engine.cli.main import main
try:
    main()
finally:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
    print(hwm, file=sys.stderr)
"""


def history_of(n: int, tmp: Path) -> tuple[Store, History]:
    s = Store.create(tmp / f"h{n}")
    s.log.init_branch("main")
    h = History.open(s.log, "main", blobs=s.blobs)
    events = synthetic_events(n)
    for i in range(0, n, 10_000):
        h.record(*events[i:i + 10_000])
    return s, h


def sizes_bench(sizes: list[int], tmp: Path) -> None:
    from click.testing import CliRunner

    from sia_engine.cli.main import main

    print(f"{'events':>9} {'fork+append ms':>15} {'cold fork ms':>13} {'rebuild p50 ms':>15} {'p95 ms':>8} {'sia log ms':>11} {'log all ms':>11}")
    rng = random.Random(0)
    for n in sizes:
        t0 = time.perf_counter()
        s, main_h = history_of(n, tmp)
        build = time.perf_counter() - t0
        head = s.log.branch("main").head_seq
        forks, cold = [], []
        for k in range(5):  # the engine's fork: from an open history's head (the state is in memory)
            t0 = time.perf_counter()
            h = main_h.fork(f"f{k}", reason="bench")
            h.record(ActionTaken(action_id=f"x{k}", episode_id="e", version_id=str(h.state.head), actor="tool", name="bench"))
            forks.append(time.perf_counter() - t0)
        for k in range(5):  # `sia fork BRANCH@SEQ`: any seq, the state rebuilt from the log first
            t0 = time.perf_counter()
            h = fork(s.log, f"c{k}", source="main", at_seq=rng.randrange(0, head + 1), reason="bench", blobs=s.blobs)
            h.record(ActionTaken(action_id=f"y{k}", episode_id="e", version_id=str(h.state.head), actor="tool", name="bench"))
            cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()  # the first rebuild in a process also reads the snapshot index
        rebuild(s.log, "main", until_seq=rng.randrange(0, head + 1))
        first = time.perf_counter() - t0
        rebuilds = []
        for _ in range(20):
            seq = rng.randrange(0, head + 1)
            t0 = time.perf_counter()
            rebuild(s.log, "main", until_seq=seq)
            rebuilds.append(time.perf_counter() - t0)
        rebuilds.sort()
        log_ms = log_all = "-"
        peak = ""
        root = str(s.root)
        s.close()
        if n >= 100_000:
            t0 = time.perf_counter()
            CliRunner().invoke(main, ["log", "--store", root])
            log_ms = f"{(time.perf_counter() - t0) * 1000:.0f}"
            # the whole log, as a user runs it: its own process, the JSON piped away and counted
            t0 = time.perf_counter()
            p = subprocess.Popen([sys.executable, "-c", _LOG_ALL, "log", "--limit", "0", "--json", "--store", root],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert p.stdout is not None and p.stderr is not None
            size = sum(len(chunk) for chunk in iter(lambda: p.stdout.read(1 << 20), b""))  # type: ignore[union-attr]
            rss = p.stderr.read().decode().strip().splitlines()[-1]
            assert p.wait() == 0
            log_all = f"{(time.perf_counter() - t0) * 1000:.0f}"
            peak = f"; log all: {size / 1e6:.0f} MB of JSON, that process's peak RSS {int(rss) / 1024:.0f} MB"
        print(f"{n:>9,} {statistics.median(forks) * 1000:>15.1f} {statistics.median(cold) * 1000:>13.1f} {statistics.median(rebuilds) * 1000:>15.1f} "
              f"{rebuilds[int(0.95 * (len(rebuilds) - 1))] * 1000:>8.1f} {log_ms:>11} {log_all:>11}   (built in {build:.0f} s; "
              f"first rebuild {first * 1000:.1f} ms){peak}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,10000,100000,1000000")
    ap.add_argument("--store", default=None, help="also replay this store's main branch against its recorded wall time")
    ap.add_argument("--main-job", action="store_true", help="also run the README's main job, then replay (and --retrain) it")
    ap.add_argument("--retrain", action="store_true", help="with --store or --main-job: train every adapter again, compared byte for byte")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        replay_vs_run(Path(d))
        if a.main_job:
            store = Path(d) / "main-job"
            store_replay(store, run_main_job(store), a.retrain)
        if a.store:
            store_replay(Path(a.store), None, a.retrain)
        sizes_bench([int(x) for x in a.sizes.split(",")], Path(d))


if __name__ == "__main__":
    main()
