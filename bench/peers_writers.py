"""Concurrent writers for ``bench_peers.py``: W threads, each recording one event per durable
commit on a history of its own, into one store, as each peer's users would run it: this log's
``History`` per branch (and its bare ``log.append``), eventsourcing's one ``Application`` with an
aggregate per thread, LangGraph's one ``SqliteSaver`` with a thread id per thread, one DuckDB
connection with a cursor per thread. Figures: events per second, all threads together."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_peers as bp


def _race(writers: int, setup: Callable[[int], Callable[[], None]], per: int) -> float:
    """Events/s of ``writers`` threads, each calling its own step (from ``setup(t)``) ``per`` times."""
    steps = [setup(t) for t in range(writers)]
    start = threading.Barrier(writers + 1)
    errors: list[BaseException] = []

    def run(step: Callable[[], None]) -> None:
        start.wait()
        try:
            for _ in range(per):
                step()
        except BaseException as e:  # reported, not swallowed: a peer that cannot take threads says so
            errors.append(e)

    threads = [threading.Thread(target=run, args=(s,)) for s in steps]
    for th in threads:
        th.start()
    start.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    took = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"a writer failed: {errors[0]!r}") from errors[0]
    return writers * per / took


def ours(d: Path, writers: int, per: int) -> float:
    from sia_engine.domain.events import ActionTaken, RunStarted
    from sia_engine.domain.history import History
    from sia_engine.domain.scaffold import Scaffold
    from store import Store

    s = Store.create(d / "w-ours")

    def setup(t: int) -> Callable[[], None]:
        s.log.init_branch(f"w{t}")
        h = History.open(s.log, f"w{t}", blobs=s.blobs)
        h.record(RunStarted(run_id=f"w{t}", task="bench", seed=t, base_model=bp.BASE, scaffold=Scaffold(), engine_version="b",
                            levers=("scaffold",)))
        n = iter(range(10**9))

        def step() -> None:
            h.record(ActionTaken(action_id=f"a{next(n)}", episode_id="train-3", version_id=str(h.state.head), actor="model",
                                 name="generate", inputs=bp.PAYLOAD["inputs"], outputs=bp.PAYLOAD["outputs"]))

        return step

    try:
        return _race(writers, setup, per)
    finally:
        s.close()


def ours_log(d: Path, writers: int, per: int) -> float:
    from store import DuckEventLog

    log = DuckEventLog(d / "w-raw.duckdb")
    event = bp.step_event()  # the bytes ``History`` records for a step

    def setup(t: int) -> Callable[[], None]:
        log.init_branch(f"w{t}")
        head: list[str | None] = [None]

        def step() -> None:
            head[0] = log.append(f"w{t}", [event], expected_head=head[0])[-1]

        return step

    try:
        return _race(writers, setup, per)
    finally:
        log.close()


def eventsourcing(d: Path, writers: int, per: int, kind: str) -> float:
    Agent, App = bp._es_classes()
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(d / f"w-es-{kind}.sqlite")} if kind == "SQLite" else {}
    app = App(env=env)

    def setup(t: int) -> Callable[[], None]:
        agent = Agent()
        app.save(agent)

        def step() -> None:
            agent.act(bp.PAYLOAD)
            app.save(agent)

        return step

    try:
        return _race(writers, setup, per)
    finally:
        app.close()


def langgraph(d: Path, writers: int, per: int) -> float:
    import sqlite3

    from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(str(d / "w-lg.sqlite"), check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()

    def setup(t: int) -> Callable[[], None]:
        state: dict[str, Any] = {"config": {"configurable": {"thread_id": f"w{t}", "checkpoint_ns": ""}}, "cp": empty_checkpoint(), "step": 0}

        def step() -> None:
            state["step"] += 1
            cp = create_checkpoint(state["cp"], None, state["step"])
            cp["channel_values"] = {"events": [bp.PAYLOAD]}
            state["config"] = saver.put(state["config"], cp, {"source": "loop", "step": state["step"], "parents": {}}, {})
            state["cp"] = cp

        return step

    try:
        return _race(writers, setup, per)
    finally:
        conn.close()


def duckdb_raw(d: Path, writers: int, per: int) -> float:
    import duckdb

    con = duckdb.connect(str(d / "w-raw-arrow.duckdb"))
    con.execute("CREATE TABLE events (w INTEGER, seq BIGINT, kind VARCHAR, payload VARCHAR)")
    data = json.dumps(bp.PAYLOAD)

    def setup(t: int) -> Callable[[], None]:
        cur = con.cursor()
        n = iter(range(10**9))

        def step() -> None:
            cur.execute("INSERT INTO events VALUES (?, ?, 'action_taken', ?)", [t, next(n), data])

        return step

    try:
        return _race(writers, setup, per)
    finally:
        con.close()


def measure(d: Path, writers: int = 4, per: int = 500) -> dict[str, float]:
    """Events/s with ``writers`` concurrent writers, keyed by the peers' names in ``bench_peers``."""
    out: dict[str, float] = {}
    for name, fn in [
        ("sia-engine log", lambda: ours(d, writers, per)),
        ("sia-engine log.append", lambda: ours_log(d, writers, per)),
        ("eventsourcing SQLite", lambda: eventsourcing(d, writers, per, "SQLite")),
        ("eventsourcing POPO", lambda: eventsourcing(d, writers, per, "POPO")),
        ("LangGraph SqliteSaver", lambda: langgraph(d, writers, per)),
        ("raw DuckDB + Arrow", lambda: duckdb_raw(d, writers, per)),
    ]:
        try:
            out[name] = fn()
        except RuntimeError as e:
            print(f"  {name}: {e}")
        print(f"  measured {name} with {writers} writers", flush=True)
    return out
