"""Crash campaign: SIGKILL a real run at random points, resume it, compare with a run never killed.

    python bench/crash_campaign.py [--kills 200] [--seed 0]

The run: ``Loop`` on arith with the tiny model (both levers, so LoRA training and adapter blob
writes happen), 3 iterations, 2 samples per episode. First once without interruption. Then the
same run in a second store, started again and again: each start is SIGKILLed after a random delay
drawn uniformly over the uninterrupted run's duration (measured from the moment the child has
imported everything), until a start finishes on its own. Kills are counted by where they landed
(the phase of the last event the store holds afterwards: generating, training, evaluating ...),
and after every kill the store must verify. At the end the killed run must hold exactly the
uninterrupted run's events (same ids, so same contents in the same order) and the same blobs.
A divergence is printed with what differs.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from store import Store, StoreNotFound

CHILD = """
import sys
from store import Store
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.models.protocol import LoraSettings
from sia_engine.models.presets import tiny_model
from tasks import get_task
task, model = get_task("arith"), tiny_model()
print("go", flush=True)
with Store.create(sys.argv[1]) as s:  # as `sia run` does: creates the store, or opens it to resume
    Loop(s, task=task, model=model, feedback=RulePolicy(),
         config=LoopConfig(task="arith", iterations=3, train_episodes=6, val_episodes=6, samples=2,
                           lora=LoraSettings(steps=6))).run()
print("done", flush=True)
"""


def start(store: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(store)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if line != "go":
        child.wait()
        raise RuntimeError(f"the child did not start: {child.stderr.read() if child.stderr else ''}")
    return child


def snapshot_of(store: Path) -> tuple[dict[str, list[str]], set[str], bool, str]:
    """(event ids per branch, blob ids, verify ok, kind of the last event)."""
    from sia_engine.domain.integrity import verify_store

    with Store.open(store, read_only=True) as s:
        ids = {b.name: [e.id for e in s.log.read(b.name)] for b in s.log.branches()}
        last = "(none)"
        if ids.get("main"):
            env = s.log.read("main")[-1]
            last = env.kind
            if env.kind == "feedback_verdict":  # killed while acting on it: patching, or training an adapter
                lever = __import__("json").loads(env.payload).get("lever")
                last += " (weights: during LoRA training or the blob write)" if lever == "weights" else f" ({lever})"
        return ids, set(s.blobs.ids()), verify_store(s.log, s.blobs).ok, last


def campaign(kills: int, seed: int, work: Path, *, quiet: bool = False) -> dict[str, object]:
    clean = work / "clean"
    t0 = time.perf_counter()
    child = start(clean)
    go = time.perf_counter()
    out, errs = child.communicate()
    assert child.returncode == 0, errs
    run_s = time.perf_counter() - go
    want_ids, want_blobs, ok, _ = snapshot_of(clean)
    assert ok
    rng = random.Random(seed)
    crashy = work / "crashy"
    landed: Counter[str] = Counter()
    problems: list[str] = []
    done_kills = starts = 0
    while True:
        starts += 1
        child = start(crashy)
        if done_kills < kills:
            time.sleep(rng.uniform(0.0, run_s))
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
                done_kills += 1
        child.wait()
        if child.returncode == 0:
            if done_kills >= kills:
                break
            import shutil

            shutil.rmtree(crashy)  # finished before the kills were spent: a new run, killed again
            continue
        try:
            _, _, ok, last = snapshot_of(crashy)
        except StoreNotFound:  # killed before the store's first commit: there is no store yet
            landed["before the store existed"] += 1
            continue
        landed[last] += 1
        if not ok:
            problems.append(f"kill {done_kills}: the store does not verify (last event {last})")
        if not quiet and done_kills % 20 == 0:
            print(f"  {done_kills} kills, {time.perf_counter() - t0:.0f} s", flush=True)
    got_ids, got_blobs, ok, _ = snapshot_of(crashy)
    if got_ids != want_ids:
        for b in sorted(want_ids.keys() | got_ids.keys()):
            w, g = want_ids.get(b, []), got_ids.get(b, [])
            if w != g:
                first = next((i for i, (x, y) in enumerate(zip(w, g)) if x != y), min(len(w), len(g)))
                problems.append(f"branch {b}: {len(g)} events against {len(w)}, first difference at seq {first}")
    if got_blobs != want_blobs:
        problems.append(f"blobs differ: {len(got_blobs - want_blobs)} extra, {len(want_blobs - got_blobs)} missing")
    if not ok:
        problems.append("the final store does not verify")
    return {"kills": done_kills, "starts": starts, "run_s": run_s, "events": sum(len(v) for v in want_ids.values()),
            "blobs": len(want_blobs), "landed": landed, "problems": problems, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        r = campaign(a.kills, a.seed, Path(d))
    print(f"uninterrupted run: {r['events']} events, {r['blobs']} blobs, {r['run_s']:.1f} s after imports")
    print(f"{r['kills']} SIGKILLs over {r['starts']} starts in {r['seconds']:.0f} s; where they landed (last event in the store):")
    for k, n in sorted(r["landed"].items(), key=lambda kv: -kv[1]):  # type: ignore[attr-defined]
        print(f"  {n:>4}  {k}")
    problems: list[str] = r["problems"]  # type: ignore[assignment]
    print(f"divergences: {len(problems)}")
    for p in problems:
        print("  " + p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
