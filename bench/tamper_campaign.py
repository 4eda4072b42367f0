"""Tamper campaign: random single-byte flips across a store's files, every outcome classified.

    python bench/tamper_campaign.py [--flips 1000] [--seed 0] [--keep DIR]

The store: a tiny-model run on arith (both levers, so it holds adapter blobs), then a writer
killed mid-run (``os._exit``) after recording 1,100 more events: 1,000 reached DuckDB and sit in
its WAL, the last 100 are only in the journal, and snapshot files were written. Each trial copies
that store, flips one bit of one byte of one file (``log.duckdb``, ``log.duckdb.wal``, the
journal, a blob or a snapshot file, the file first, then the byte, uniformly), and does what
``sia verify`` does (a read-only open and every check). Outcomes:

- detected: verify reports a problem, or a typed error (``StoreError``, ``SiaError``) says what is
  damaged; then a read-write open (what ``sia run`` does) is tried too, and where it is refused
  every file must be byte-identical afterwards (nothing deleted, truncated or recreated);
- harmless: verify passes and everything the store holds (every event of every branch with its
  time, the blobs) is identical to the untouched store's;
- silent: verify passes but something differs (must be 0);
- traceback: any other exception (must be 0).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from sia_engine.errors import SiaError
from store import Store, StoreError

CRASHED_WRITER = """
import os, sys
from store import Store
from sia_engine.domain.events import ActionTaken
from sia_engine.domain.history import History
s = Store.open(sys.argv[1])
h = History.open(s.log, "main", blobs=s.blobs)
head = str(h.state.head)
for i in range(1100):
    h.record(ActionTaken(action_id=f"probe{i}", episode_id="e", version_id=head, actor="tool", name="probe",
                         inputs={"i": i}, outputs={"ok": True}))
os._exit(0)  # no close: DuckDB's WAL and the journal stay as a killed writer leaves them
"""


def build(folder: Path) -> Path:
    """The store the campaign damages (see the module's docstring)."""
    from sia_engine.loop.feedback.rule import RulePolicy
    from sia_engine.loop.loop import Loop, LoopConfig
    from sia_engine.models.presets import tiny_model
    from sia_engine.models.protocol import LoraSettings
    from tasks import get_task

    path = folder / "store"
    with Store.create(path) as s:
        cfg = LoopConfig(task="arith", iterations=3, train_episodes=6, val_episodes=6, samples=2, lora=LoraSettings(steps=2))
        Loop(s, task=get_task("arith"), model=tiny_model(), feedback=RulePolicy(), config=cfg).run()
    subprocess.run([sys.executable, "-c", CRASHED_WRITER, str(path)], check=True)
    return path


def targets(store: Path) -> dict[str, list[Path]]:
    groups = {
        "log.duckdb": [store / "log.duckdb"],
        "wal": [store / "log.duckdb.wal"],
        "journal": [store / "log.duckdb.journal"],
        "blob": sorted(p for p in (store / "blobs").rglob("*") if p.is_file()),
        "snapshot": sorted(p for p in (store / "log.duckdb.snapshots").glob("*") if p.is_file()),
    }
    return {k: [p for p in v if p.is_file() and p.stat().st_size] for k, v in groups.items() if any(p.is_file() and p.stat().st_size for p in v)}


def files_digest(store: Path) -> dict[str, str]:
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(store.rglob("*")) if p.is_file()}


def content_digest(s: Store) -> str:
    """Everything the store says: every branch's own events with their times, and the blobs."""
    h = hashlib.sha256()
    for b in s.log.branches():
        h.update(repr((b.name, b.base_branch, b.base_seq, b.base_id, b.head_seq, b.head_id)).encode())
        for e in s.log.iter_read(b.name):
            if e.branch == b.name:
                h.update(repr((e.id, e.parent, e.branch, e.seq, e.kind, e.schema, e.recorded_at.isoformat())).encode())
                h.update(e.payload)
    for blob_id in sorted(s.blobs.ids()):
        h.update(s.blobs.get(blob_id))
    return h.hexdigest()


def check(store: Path) -> tuple[str, str]:
    """(outcome, detail) of `sia verify` on ``store``, as classified in the module's docstring."""
    from sia_engine.domain.integrity import verify_store

    try:
        with Store.open(store, read_only=True) as s:
            report = verify_store(s.log, s.blobs)
            digest = content_digest(s) if report.ok else ""
    except (StoreError, SiaError) as e:
        return "detected", f"{type(e).__name__}: {str(e)[:160]}"
    except Exception as e:  # noqa: BLE001 - what the campaign is here to find
        return "traceback", f"{type(e).__name__}: {str(e)[:300]}"
    if not report.ok:
        return "detected", f"verify: {str(report.first)[:160]}"
    return "ok", digest


def read_write_refusal_keeps_files(store: Path) -> str | None:
    """Open read-write as `sia run` does; where it is refused, every file must be unchanged.
    Returns a problem, or None."""
    before = files_digest(store)
    try:
        Store.open(store).close()
        return None  # opened: a journal moved in, a WAL folded in; that is the normal path
    except (StoreError, SiaError):
        after = files_digest(store)
        return None if after == before else f"a refused read-write open changed {sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))}"
    except Exception as e:  # noqa: BLE001
        return f"read-write open raised {type(e).__name__}: {str(e)[:200]}"


def campaign(flips: int, seed: int, work: Path, *, quiet: bool = False) -> dict[str, object]:
    base = build(work)
    outcome, original = check(base)
    assert outcome == "ok", f"the untouched store does not verify: {original}"
    groups = targets(base)
    rng = random.Random(seed)
    counts: Counter[tuple[str, str]] = Counter()
    bad: list[str] = []
    t0 = time.perf_counter()
    for i in range(flips):
        group = rng.choice(sorted(groups))
        src = rng.choice(groups[group])
        trial = work / f"t{i}"
        shutil.copytree(base, trial)
        target = trial / src.relative_to(base)
        data = bytearray(target.read_bytes())
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
        outcome, detail = check(trial)
        if outcome == "ok":
            outcome = "harmless" if detail == original else "silent"
        if outcome == "detected":
            problem = read_write_refusal_keeps_files(trial)
            if problem:
                outcome, detail = "traceback" if "raised" in problem else "silent", problem
        counts[(group, outcome)] += 1
        if outcome in ("silent", "traceback"):
            bad.append(f"{group} {target.name} byte {pos}: {outcome}: {detail}")
        shutil.rmtree(trial)
        if not quiet and (i + 1) % 100 == 0:
            print(f"  {i + 1} flips, {time.perf_counter() - t0:.0f} s", flush=True)
    return {"counts": counts, "bad": bad, "groups": {k: len(v) for k, v in groups.items()}, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flips", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        r = campaign(a.flips, a.seed, Path(d))
    counts: Counter[tuple[str, str]] = r["counts"]  # type: ignore[assignment]
    print(f"{a.flips} single-bit flips (seed {a.seed}) in {r['seconds']:.0f} s; files per group: {r['groups']}")
    print(f"{'file':>11} {'flips':>6} {'detected':>9} {'harmless':>9} {'silent':>7} {'traceback':>10}")
    for g in sorted({g for g, _ in counts}):
        row = {o: counts[(g, o)] for o in ("detected", "harmless", "silent", "traceback")}
        print(f"{g:>11} {sum(row.values()):>6} {row['detected']:>9} {row['harmless']:>9} {row['silent']:>7} {row['traceback']:>10}")
    tot = Counter(o for (_, o), n in counts.items() for _ in range(n))
    print(f"{'all':>11} {sum(tot.values()):>6} {tot['detected']:>9} {tot['harmless']:>9} {tot['silent']:>7} {tot['traceback']:>10}")
    for line in r["bad"]:  # type: ignore[attr-defined]
        print("  " + line)
    sys.exit(1 if r["bad"] else 0)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
