"""After an experiment (bench/experiment_power.sh): everything from the log, checked.

    python bench/experiment_check.py STORE NAME [--data DIR] [--no-replay]

Prints the experiment's result as read from the store, the same result recomputed from an
exported Parquet copy (and whether they are equal), `verify_store` on the whole store, and a
recorded replay of every branch of the experiment (the prefix, every arm and seed) with the
task's scorer: what each recomputed and how long it took. Exit 1 if anything differs or fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store")
    ap.add_argument("name")
    ap.add_argument("--data", default=None, help="the task's data folder, where it needs one (lawbench)")
    ap.add_argument("--no-replay", action="store_true")
    a = ap.parse_args()
    import msgspec
    import pyarrow.parquet as pq

    from replay.cli import task_or_none
    from replay.export import export_parquet
    from replay.recorded import replay_recorded
    from sia_engine.domain.integrity import verify_store
    from sia_engine.experiment.table import Recorded, experiment_result, result_from_records
    from store import Store

    ok = True
    with Store.open(a.store, read_only=True) as s:
        result = experiment_result(s, a.name)
        with tempfile.TemporaryDirectory() as tmp:
            export_parquet(s, tmp)
            rows = pq.read_table(Path(tmp) / "events.parquet").to_pylist()
        recs = [Recorded.from_row(r["branch"], r["seq"], r["kind"], r["schema"], r["payload"], r["recorded_at"]) for r in rows]
        again = result_from_records(recs, a.name)
        same = msgspec.to_builtins(again) == msgspec.to_builtins(result)
        ok &= same
        print(f"recomputed from an exported Parquet copy ({len(rows)} events): {'identical' if same else 'DIFFERS'}")
        t0 = time.perf_counter()
        report = verify_store(s.log, s.blobs)
        ok &= report.ok
        print(f"verify_store: {'OK' if report.ok else 'FAILED: ' + str(report.first)} ({time.perf_counter() - t0:.1f} s)")
        if not a.no_replay:
            branches = [b.name for b in s.log.branches() if b.name.startswith(a.name + "-")]
            for b in branches:
                task = task_or_none(result_task(s, b), a.data)
                t0 = time.perf_counter()
                try:
                    r = replay_recorded(s, b, task)
                    print(f"replay {b}: {r.n_events} events, {r.rescored} re-scored, {r.evaluations} evaluations, "
                          f"{r.verdicts} verdicts, {r.decisions} decisions, {r.baselines} baselines "
                          f"({time.perf_counter() - t0:.1f} s){'; skipped: ' + '; '.join(r.skipped) if r.skipped else ''}")
                except Exception as e:  # a divergence is a finding: report it, go on with the rest
                    ok = False
                    print(f"replay {b}: FAILED {type(e).__name__}: {e}")
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


def result_task(s: object, branch: str) -> str:
    from replay.rebuild import state_at

    state = state_at(s.log, branch)  # type: ignore[attr-defined]
    assert state.run is not None
    return state.run.task


if __name__ == "__main__":
    sys.exit(main())
