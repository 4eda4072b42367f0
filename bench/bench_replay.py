"""Replay and branching benchmark: what an auditor waits for.

    python bench/bench_replay.py [--sizes 10000,1000000] [--store PATH]

1. Recorded replay against the run that produced the log: a tiny-model run on arith (4
   iterations, 2 samples per episode) timed live, then ``replay_recorded`` of its branch (every
   output re-scored, rule verdicts and gate decisions recomputed). With ``--store PATH`` also the
   store's own ``main`` branch, against the wall time its events span (``recorded_at``).
2. For each size: a synthetic history (bench_log's generator) recorded through ``History``
   (snapshots every 5,000 events); engine fork at the head plus its first append (median of 5);
   rebuild of the state at random seqs (p50, p95 of 20); and at 100k events or more, ``sia log``
   (the last 50 events), and at 100k ``sia log --limit 0 --json`` (all of them, one JSON document
   built in memory: at 1M events that ran this 24 GiB machine out of memory).

Targets (issue 8): recorded replay >= 50x faster than the run; fork <= 5 ms and flat from 10 to 1M
events; rebuild at any seq of a 1M-event log p95 <= 10 ms; ``sia log`` of 100k events < 0.5 s.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_log import synthetic_events  # noqa: E402
from replay.recorded import replay_recorded  # noqa: E402
from sia_engine.events import ActionTaken  # noqa: E402
from sia_engine.feedback import RulePolicy  # noqa: E402
from sia_engine.history import History, fork, rebuild  # noqa: E402
from sia_engine.loop import Loop, LoopConfig  # noqa: E402
from sia_engine.model import LoraSettings  # noqa: E402
from store import Store  # noqa: E402


def replay_vs_run(tmp: Path, store_path: str | None) -> None:
    from sia_engine.presets import tiny_model
    from tasks import get_task

    task = get_task("arith")
    with Store.create(tmp / "run") as s:
        cfg = LoopConfig(task="arith", iterations=4, train_episodes=8, val_episodes=8, samples=2, lora=LoraSettings(steps=4))
        t0 = time.perf_counter()
        Loop(s, task=task, model=tiny_model(), feedback=RulePolicy(), config=cfg).run()
        run_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = replay_recorded(s, "main", task)
        rep_s = time.perf_counter() - t0
    print(f"tiny-model arith run: {r.n_events} events in {run_s:.2f} s; recorded replay {rep_s * 1000:.0f} ms "
          f"({r.rescored} re-scored, {r.verdicts} verdicts, {r.decisions} decisions): {run_s / rep_s:.0f}x faster")
    if store_path:
        with Store.open(store_path, read_only=True) as s:
            events = s.log.read("main")
            span = (events[-1].recorded_at - events[0].recorded_at).total_seconds()
            run = rebuild(s.log, "main")[0].run
            named = get_task(run.task) if run is not None else None
            t0 = time.perf_counter()
            r = replay_recorded(s, "main", named)
            rep_s = time.perf_counter() - t0
        print(f"{store_path}: {r.n_events} events recorded over {span:.0f} s; recorded replay {rep_s:.2f} s "
              f"({r.rescored} outputs re-scored): {span / rep_s:.0f}x faster")


def history_of(n: int, tmp: Path) -> Store:
    s = Store.create(tmp / f"h{n}")
    s.log.init_branch("main")
    h = History.open(s.log, "main", blobs=s.blobs)
    events = synthetic_events(n)
    for i in range(0, n, 10_000):
        h.record(*events[i:i + 10_000])
    return s


def sizes_bench(sizes: list[int], tmp: Path) -> None:
    from click.testing import CliRunner

    from sia_engine.cli import main

    print(f"{'events':>9} {'fork+append ms':>15} {'rebuild p50 ms':>15} {'p95 ms':>8} {'sia log ms':>11} {'log all ms':>11}")
    rng = random.Random(0)
    for n in sizes:
        t0 = time.perf_counter()
        s = history_of(n, tmp)
        build = time.perf_counter() - t0
        head = s.log.branch("main").head_seq
        forks = []
        for k in range(5):
            t0 = time.perf_counter()
            h = fork(s.log, f"f{k}", source="main", at_seq=head, reason="bench", blobs=s.blobs)
            h.record(ActionTaken(action_id=f"x{k}", episode_id="e", version_id=str(h.state.head), actor="tool", name="bench"))
            forks.append(time.perf_counter() - t0)
        rebuilds = []
        for _ in range(20):
            seq = rng.randrange(0, head + 1)
            t0 = time.perf_counter()
            rebuild(s.log, "main", until_seq=seq)
            rebuilds.append(time.perf_counter() - t0)
        rebuilds.sort()
        log_ms = log_all = "-"
        root = str(s.root)
        s.close()
        if n >= 100_000:
            t0 = time.perf_counter()
            CliRunner().invoke(main, ["log", "--store", root])
            log_ms = f"{(time.perf_counter() - t0) * 1000:.0f}"
            if n <= 100_000:  # the whole log as one JSON document: held in memory (see the README)
                t0 = time.perf_counter()
                CliRunner().invoke(main, ["log", "--limit", "0", "--json", "--store", root])
                log_all = f"{(time.perf_counter() - t0) * 1000:.0f}"
        print(f"{n:>9,} {statistics.median(forks) * 1000:>15.1f} {statistics.median(rebuilds) * 1000:>15.1f} "
              f"{rebuilds[int(0.95 * (len(rebuilds) - 1))] * 1000:>8.1f} {log_ms:>11} {log_all:>11}   (built in {build:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,10000,100000,1000000")
    ap.add_argument("--store", default=None, help="also replay this store's main branch against its recorded wall time")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        replay_vs_run(Path(d), a.store)
        sizes_bench([int(x) for x in a.sizes.split(",")], Path(d))


if __name__ == "__main__":
    main()
