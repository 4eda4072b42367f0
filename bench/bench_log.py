"""Event-log benchmark: append, verify, reduce, rebuild, fork and size at several history lengths.

    python bench/bench_log.py [--sizes 10000,100000,1000000] [--batch 10000]

Every rate is measured in this run, beside a raw DuckDB Arrow append of the same rows (same
columns, ids and payloads, no hashing, no checks) into a table with the same definition and into
one without constraints. Events are realistic engine events, valid for the reducer: each iteration
rolls out 100 training episodes (a model call and a trajectory each), then records a verdict, a
scaffold patch, 100 validation episodes, an evaluation and a decision (~405 events per candidate
version, so a 1M-event log holds ~2,500 versions).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa

from sia_engine.domain.events import (
    ActionTaken,
    Event,
    FeedbackVerdict,
    ModelRef,
    RunStarted,
    ScaffoldPatched,
    TrajectoryRecorded,
    VersionAccepted,
    VersionEvaluated,
    VersionRejected,
    encode,
)
from sia_engine.domain.history import History, fork, rebuild
from sia_engine.domain.integrity import verify_store
from sia_engine.domain.scaffold import PatchOp, Scaffold, apply_patch, scaffold_hash
from sia_engine.domain.state import AgentState, apply, reduce, version_id
from store import DuckEventLog, NewEvent, event_id
from store.duck.schema import DDL
from store.duck.arrow import ARROW_SCHEMA

BASE = ModelRef(id="bench/base", revision="r", weights_hash="0" * 64)


def synthetic_events(n: int, seed: int = 0) -> list[Event]:
    rng = random.Random(seed)
    events: list[Event] = [
        RunStarted(run_id="bench", task="bench", seed=seed, base_model=BASE, scaffold=Scaffold(system_prompt="Answer."), engine_version="bench", levers=("scaffold",))
    ]
    state = apply(AgentState(), events[0])
    i = 0
    while len(events) < n:
        i += 1
        head = state.head_version
        assert head is not None
        if i % 201 == 0:
            ops = (PatchOp("replace", "/system_prompt", f"Answer briefly, attempt {i}."),)
            sc = apply_patch(head.scaffold, ops)
            vid = version_id(BASE, sc, head.adapter)
            score = rng.random()
            val: list[Event] = []
            for k in range(100):
                text = rng.choice(["The charge is theft.", "Fraud", "yes"])
                val += [
                    ActionTaken(action_id=f"v{i}-{k}", episode_id=f"val{k}", version_id=vid, actor="model", name="generate",
                                inputs={"prompt": f"Validation question {k}: which charge applies?", "temperature": 0.0},
                                outputs={"text": text, "tokens": rng.randint(3, 40)}),
                    TrajectoryRecorded(trajectory_id=f"v{i}-{k}", episode_id=f"val{k}", split="val", version_id=vid,
                                       output=text, score=float(rng.random() < 0.4), action_ids=(f"v{i}-{k}",)),
                ]
            batch: list[Event] = [
                FeedbackVerdict(version_id=head.version_id, lever="scaffold", rationale="format errors", policy="rule", evidence=(f"t{i - 1}",), patch=ops),
                ScaffoldPatched(parent_version=head.version_id, version_id=vid, ops=ops, scaffold_hash=scaffold_hash(sc)),
                *val,
                VersionEvaluated(version_id=vid, split="val", score=score, n_episodes=100),
                VersionAccepted(version_id=vid, previous=head.version_id, score=score, previous_score=None, margin=0.0)
                if rng.random() < 0.5
                else VersionRejected(version_id=vid, head=head.version_id, score=score, head_score=None, reason="no better"),
            ]
        else:
            text = rng.choice(["The charge is theft.", "Fraud", "I cannot answer that.", "yes"])
            batch = [
                ActionTaken(action_id=f"a{i}", episode_id=f"ep{i % 500}", version_id=head.version_id, actor="model", name="generate",
                            inputs={"prompt": f"Question {i % 500}: which charge applies to the facts described?", "temperature": 0.7},
                            outputs={"text": text, "tokens": rng.randint(3, 40)}),
                TrajectoryRecorded(trajectory_id=f"t{i}", episode_id=f"ep{i % 500}", split="train", version_id=head.version_id,
                                   output=text, score=float(rng.random() < 0.4), metrics={"valid": 1.0}, action_ids=(f"a{i}",)),
            ]
        for e in batch:
            state = apply(state, e)
        events.extend(batch)
    return events[:n]


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>12,.0f} ev/s"


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _raw_append(con: duckdb.DuckDBPyConnection, tables: list[pa.Table]) -> None:
    for t in tables:
        con.begin()
        con.register("b", t)
        con.execute("INSERT INTO events SELECT * FROM b")
        con.unregister("b")
        con.commit()


def raw_rows(news: list[NewEvent]) -> tuple[list[str], list[str | None]]:
    """The ids and parents the log will store for ``news`` on branch main, precomputed."""
    ids: list[str] = []
    parents: list[str | None] = []
    parent: str | None = None
    for e in news:
        eid = event_id(parent, "main", e.kind, e.schema, e.payload)
        parents.append(parent)
        ids.append(eid)
        parent = eid
    return ids, parents


def bench_size(n: int, batch: int, tmp: Path) -> None:
    print(f"\n=== {n:,} events (batches of {batch:,}) ===")
    t0 = time.perf_counter()
    events = synthetic_events(n)
    news = [encode(e) for e in events]
    payload_bytes = sum(len(x.payload) for x in news)
    print(f"generated and encoded in {time.perf_counter() - t0:.1f} s; mean payload {payload_bytes / n:.0f} B")

    # raw DuckDB Arrow append of the same rows, same table definition / no constraints
    ids, parents = raw_rows(news)
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    tables = []
    for s in range(0, n, batch):
        k = min(batch, n - s)
        tables.append(pa.Table.from_arrays([
            pa.array(ids[s:s + k], pa.string()), pa.array(parents[s:s + k], pa.string()), pa.array(["main"] * k, pa.string()),
            pa.array(range(s, s + k), pa.int64()), pa.array([x.kind for x in news[s:s + k]], pa.string()),
            pa.array([x.schema for x in news[s:s + k]], pa.int32()), pa.array([now] * k, pa.timestamp("us", tz="UTC")),
            pa.array([x.payload.decode() for x in news[s:s + k]], pa.string()),
        ], schema=ARROW_SCHEMA))
    raw = {}
    for label, ddl in [("same DDL", DDL), ("no constraints", DDL.replace(", PRIMARY KEY (branch, seq)", ""))]:
        p = tmp / f"raw-{label.replace(' ', '_')}-{n}.duckdb"
        con = duckdb.connect(str(p))
        con.execute(ddl)

        raw[label] = timed(lambda con=con: _raw_append(con, tables))
        con.close()
    tables.clear()

    # our batched append, hashing and validation included
    path = tmp / f"log-{n}.duckdb"
    log = DuckEventLog(path)
    log.init_branch("main")

    def append_all() -> None:
        head = None
        for s in range(0, n, batch):
            head = log.append("main", news[s:s + batch], expected_head=head)[-1]

    t_append = timed(append_all)
    print(f"raw Arrow append, same DDL      {rate(n, raw['same DDL'])}")
    print(f"raw Arrow append, no constraints{rate(n, raw['no constraints'])}")
    print(f"log.append batched (hashing)    {rate(n, t_append)}   = {raw['same DDL'] / t_append:.0%} of raw same-DDL, "
          f"{raw['no constraints'] / t_append:.0%} of raw no-constraints")

    # single-event durable appends (one transaction and WAL sync each)
    log.init_branch("single")
    m = min(500, n)
    head = None

    def singles() -> None:
        nonlocal head
        for x in news[:m]:
            head = log.append("single", [x], expected_head=head)[-1]

    print(f"log.append one event per commit {rate(m, timed(singles))}   ({m} events)")

    t_verify = timed(lambda: log.verify())
    report = log.verify()
    assert report.ok
    print(f"verify (hash chain, SQL)        {rate(n + m, t_verify)}")
    log.close()

    # record through History (encode + reducer + append), snapshots every 1000 events
    hpath = tmp / f"hist-{n}.duckdb"
    hlog = DuckEventLog(hpath)
    hlog.init_branch("main")
    hist = History(hlog, "main", AgentState(), None)

    def record_all() -> None:
        for s in range(0, n, batch):
            hist.record(*events[s:s + batch])

    print(f"History.record batched          {rate(n, timed(record_all))}   (encode + reducer + append + snapshots every {hist.snapshot_every:,})")
    t_full = timed(lambda: verify_store(hlog))
    print(f"verify_store (chain + decode + reduce + snapshots) {rate(n, t_full)}")

    t_reduce = timed(lambda: reduce(events))
    print(f"reduce (decoded events)         {rate(n, t_reduce)}")
    t_rebuild_full = timed(lambda: rebuild(hlog, "main", use_snapshots=False))
    print(f"rebuild from log, no snapshots  {rate(n, t_rebuild_full)}   (read + decode + reduce)")

    rng = random.Random(1)
    seqs = [rng.randrange(n) for _ in range(20)]
    with_snap = []
    for s in seqs:
        t = time.perf_counter()
        st, _ = rebuild(hlog, "main", until_seq=s)
        with_snap.append(time.perf_counter() - t)
        assert st.n_events == s + 1
    no_snap = [timed(lambda s=s: rebuild(hlog, "main", until_seq=s, use_snapshots=False)) for s in seqs[:3]]
    print(f"rebuild at a random seq, snapshots   median {statistics.median(with_snap) * 1e3:7.2f} ms, max {max(with_snap) * 1e3:7.2f} ms (20 seqs)")
    print(f"rebuild at a random seq, no snapshots median {statistics.median(no_snap) * 1e3:7.1f} ms (3 seqs)")

    fork_times = []
    for j, s in enumerate(seqs[:10]):
        t = time.perf_counter()
        hlog.fork(f"f{j}", source="main", at_seq=s)
        fork_times.append(time.perf_counter() - t)
    eng_fork = timed(lambda: fork(hlog, "engine-fork", source="main", at_seq=seqs[0], reason="bench"))
    print(f"fork (store ref)                median {statistics.median(fork_times) * 1e3:6.2f} ms, max {max(fork_times) * 1e3:6.2f} ms")
    print(f"fork (engine: rebuild at point + branch_forked event) {eng_fork * 1e3:6.2f} ms")
    hlog.close()
    size = os.path.getsize(hpath) + (os.path.getsize(str(hpath) + ".wal") if os.path.exists(str(hpath) + ".wal") else 0)
    print(f"bytes per event (DuckDB file, snapshots included) {size / n:,.0f} B  (payload alone {payload_bytes / n:.0f} B)")


def bench_fork_small(tmp: Path) -> None:
    log = DuckEventLog(tmp / "small.duckdb")
    log.init_branch("main")
    log.append("main", [encode(e) for e in synthetic_events(10)], expected_head=None)
    times = []
    for j in range(10):
        t = time.perf_counter()
        log.fork(f"f{j}", source="main", at_seq=j)
        times.append(time.perf_counter() - t)
    print(f"fork at 10 events (store ref)   median {statistics.median(times) * 1e3:6.2f} ms")
    log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--batch", type=int, default=10_000)
    args = ap.parse_args()
    print(f"duckdb {duckdb.__version__}, pyarrow {pa.__version__}, python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    with tempfile.TemporaryDirectory() as d:
        bench_fork_small(Path(d))
        for n in (int(x) for x in args.sizes.split(",")):
            bench_size(n, args.batch, Path(d))


if __name__ == "__main__":
    main()
