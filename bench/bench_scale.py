"""Scaling out: an experiment with the local executor against Ray, and the driver's pulls.

    python bench/bench_scale.py [--task scrna-denoise] [--model smollm2] [--arms scaffold,weights,both]
                                [--seeds 2] [--iterations 2] [--pull-events 1000000] [--no-experiment]

1. The experiment (default: scrna-denoise, 3 arms x 2 seeds x 2 iterations, the default model)
   with ``--executor local`` on 1 thread (``OMP_NUM_THREADS=1``), then with ``--executor ray``,
   2 workers of 1 thread each, each in its own process and store: wall times, the ratio, whether
   the two stores hold the same events id for id, and each arm's time (its branch's first to last
   event, from the local store's timestamps).
2. A model of N workers built from the measured per-arm times: arms dealt to N workers longest
   first (the makespan), plus the driver's pulls (bundles x measured pull time), and the number
   of workers past which the driver's pulls are the bottleneck (events arriving per second
   against the pull throughput of 3).
3. Pull throughput: a synthetic history of ``--pull-events`` events on one branch, with adapter
   blobs, bundled, then pulled into a fresh store: events/s with every id, payload and blob checked.
   The shipping overhead per iteration: the Ray run's pull time over its iteration time.

Targets (issue 22): Ray with 2 workers >= 1.8x the local executor on 1 thread, stores identical;
``sia pull`` >= 100k events/s for 1M events, blobs verified; shipping a branch back < 2% of an
iteration.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_log import synthetic_events

from sia_engine.domain.bundle import pull_bundle
from sia_engine.domain.bundle_write import write_bundle
from sia_engine.domain.events import AdapterCheckpointed
from sia_engine.domain.history import History
from store import Store


def experiment(store: Path, args: argparse.Namespace, extra: list[str], env: dict[str, str]) -> float:
    cmd = [sys.executable, "-m", "sia_engine.cli.main", "experiment", "--task", args.task, "--model", args.model, "--arms", args.arms,
           "--seeds", str(args.seeds), "--iterations", str(args.iterations), "--store", str(store), "--json", *extra]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if out.returncode:
        raise SystemExit(f"experiment failed: {out.stderr[-3000:]}")
    return time.perf_counter() - t0


def branches(store: Path) -> dict[str, list[str]]:
    with Store.open(store, read_only=True) as s:
        return {b.name: [e.id for e in s.log.read(b.name, after_seq=-1)] for b in s.log.branches()}


def facts(store: Path) -> dict[str, list[str]]:
    """Each branch's events less what differs between any two runs of a sandboxed scorer: a tool
    call's wall time and whether the scorer's cache answered (and the ids, which chain over them)."""
    out = {}
    with Store.open(store, read_only=True) as s:
        for b in s.log.branches():
            rows = []
            for e in s.log.read(b.name, after_seq=-1):
                d = json.loads(e.payload)
                if e.kind == "action_taken" and d.get("actor") == "tool":
                    d["outputs"] = {k: v for k, v in d["outputs"].items() if k not in ("wall_s", "cached")}
                d.pop("source_event", None)
                rows.append(json.dumps(d, sort_keys=True))
            out[b.name] = rows
    return out


def arm_times(store: Path) -> dict[str, float]:
    with Store.open(store, read_only=True) as s:
        out = {}
        for b in s.log.branches():
            envs = s.log.read(b.name, after_seq=-1)
            if b.base_branch is not None and envs:
                out[b.name] = (envs[-1].recorded_at - envs[0].recorded_at).total_seconds()
        return out


def makespan(times: list[float], n: int) -> float:
    """Arms dealt to ``n`` workers, longest first, each to the least loaded."""
    loads = [0.0] * n
    heapq.heapify(loads)
    for t in sorted(times, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + t)
    return max(loads)


def pull_throughput(n: int, tmp: Path, adapters: int = 50) -> tuple[float, int, int]:
    """(events/s, events, blobs) of a pull of a bundle of ``n`` synthetic events ending with
    ``adapters`` weights candidates, each naming a 256 KiB adapter blob."""
    import numpy as np

    from sia_engine.domain.events import FeedbackVerdict, TrainingPlan, VersionEvaluated, VersionRejected
    from sia_engine.domain.state import version_id

    with Store.create(tmp / "src") as s:
        s.log.init_branch("main")
        h = History.open(s.log, "main", blobs=s.blobs, snapshot_every=0)
        events = synthetic_events(max(1, n - 4 * adapters))
        for i in range(0, len(events), 10_000):
            h.record(*events[i:i + 10_000])
        for j in range(adapters):
            head = h.state.head_version
            assert h.state.run is not None and head is not None
            blob = s.blobs.put_tensors({"lora_A": np.full((256, 256), j, dtype=np.float32)})
            vid = version_id(h.state.run.base_model, head.scaffold, blob)
            h.record(FeedbackVerdict(version_id=head.version_id, lever="weights", rationale="bench", policy="rule",
                                     training_plan=TrainingPlan(("t1",), recipe="rft")),
                     AdapterCheckpointed(parent_version=head.version_id, version_id=vid, blob=blob, peft_config={}, training_data=("t1",), seed=j),
                     VersionEvaluated(version_id=vid, split="val", score=0.1, n_episodes=1),
                     VersionRejected(version_id=vid, head=head.version_id, score=0.1, head_score=None, reason="bench"))
        write_bundle(s, ["main"], tmp / "main.bundle")
    with Store.create(tmp / "dst") as d:
        t0 = time.perf_counter()
        r = pull_bundle(d, tmp / "main.bundle")
        dt = time.perf_counter() - t0
    return r.events / dt, r.events, r.blobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="scrna-denoise")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--arms", default="scaffold,weights,both")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--pull-events", type=int, default=1_000_000)
    ap.add_argument("--no-experiment", action="store_true")
    args = ap.parse_args()
    one = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.no_experiment:
            local = experiment(tmp / "local", args, [], one)
            ray = experiment(tmp / "ray", args, ["--executor", "ray", "--workers", "2", "--worker-threads", "1"], one)
            same = branches(tmp / "local") == branches(tmp / "ray")
            alike = facts(tmp / "local") == facts(tmp / "ray")
            times = arm_times(tmp / "local")
            print(f"(1) {args.task}, {args.arms} x {args.seeds} seeds x {args.iterations} iterations: local (1 thread) {local:.0f} s; "
                  f"Ray (2 workers x 1 thread) {ray:.0f} s: {local / ray:.2f}x; stores identical id for id: {same}; "
                  f"identical but for the sandbox calls' wall times and cache hits: {alike}")
            print("    per arm (local): " + ", ".join(f"{k} {v:.0f} s" for k, v in sorted(times.items())))
        rate, n, blobs = pull_throughput(args.pull_events, tmp)
        print(f"(3) pull: {n:,} events and {blobs} blobs, every id, payload and blob checked: {rate:,.0f} events/s")
        if not args.no_experiment:
            per_iter = [t / args.iterations for t in times.values()]
            events_per_iter = sum(len(v) for k, v in branches(tmp / "local").items() if k in times) / (len(times) * args.iterations)
            pull_s = events_per_iter / rate
            print(f"    shipping a branch back: {events_per_iter:.0f} events per iteration, pulled in {pull_s * 1000:.1f} ms: "
                  f"{100 * pull_s / (sum(per_iter) / len(per_iter)):.3f}% of an iteration")
            pulls = len(times) * (args.iterations + 1) * pull_s  # one bundle per iteration and one after the test score, pulled one at a time
            for workers in (2, 8, 64):
                m = makespan(list(times.values()), workers)
                print(f"(2) {workers} workers: {m:.0f} s of arms (longest first) + {pulls:.2f} s of pulls; the driver pulls "
                      f"{min(workers, len(times)) * events_per_iter / (sum(per_iter) / len(per_iter)):,.0f} events/s of its {rate:,.0f}")
            bottleneck = rate * (sum(per_iter) / len(per_iter)) / events_per_iter
            print(f"    the driver's pulls become the bottleneck past ~{bottleneck:,.0f} workers (one branch each, same iteration time)")
        print(json.dumps({"pull_events_per_s": round(rate)}))


if __name__ == "__main__":
    main()
