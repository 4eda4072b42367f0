"""Peers side by side: this log against what else keeps an agent's history, one run, one workload.

    python bench/bench_peers.py --setup      # installs the peers (pinned below) into this Python, then runs
    python bench/bench_peers.py [--n 2000]   # peers already installed

Peers (not project dependencies): the ``eventsourcing`` library (its SQLite recorder and its
in-memory "POPO" recorder, through an ``Application`` and an ``Aggregate``, as its users write
it), LangGraph's SQLite checkpointer (``SqliteSaver``: one checkpoint per step, as a graph saves
them), and a raw DuckDB table fed from Arrow (no ids, no chain, no checks: a floor for what
DuckDB itself costs). Durability: this log fsyncs its journal on every append; SQLite runs in WAL
mode with ``synchronous=FULL`` (the default both peers keep), so it fsyncs its WAL on every
commit; DuckDB fsyncs its WAL on every commit; the in-memory recorder keeps nothing.

Measures (ratios against this log's figure in the same run):

1. append events/s, 1 event per durable commit, and 100 events per commit;
2. the state at depth N (N/2 of N events): this log's ``rebuild`` (snapshots every 250 events),
   eventsourcing's ``repository.get(version=...)`` with snapshots every 250, LangGraph's
   ``get_tuple`` of that checkpoint, DuckDB reading the N/2 rows;
3. a fork at depth N/2: a new branch (a ref, no copy), eventsourcing a new aggregate seeded with
   that state (it has no fork), LangGraph a new checkpoint from that one (its time travel);
4. listing the history: all N events (checkpoints, rows) read back;
5. bytes per step while the agent's state grows (a scaffold gaining one few-shot example per
   step, at 500 and at 10,000 steps): this log records a patch per step, eventsourcing an event
   per step plus its snapshots, LangGraph the whole state per checkpoint (at 500 steps only: at
   10,000 that is ~12 GB). Disk bytes after the run / steps;
6. 4 concurrent writers, one event per durable commit each, one store (``peers_writers.py``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sia_engine.domain.events import ModelRef

BASE = ModelRef(id="test/base", revision="r1", weights_hash="0" * 64)  # the base model the histories name (none runs)

PEERS = ["eventsourcing==9.5.6", "langgraph-checkpoint-sqlite==3.1.2"]

PAYLOAD = {"actor": "model", "name": "generate", "episode_id": "train-3", "inputs": {"prompt": "Which charge applies? " * 4,
           "temperature": 0.7, "seed": 12}, "outputs": {"text": "The charge is theft.", "tokens": 7}}


def folder_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size


def timed(fn: Any, repeat: int = 5) -> float:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def fresh(fn: Any, depths: list[int]) -> float:
    """Median ms of ``fn(depth)`` over ``depths``, each called once."""
    out = []
    for d in depths:
        t0 = time.perf_counter()
        fn(d)
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1000


def step_event() -> Any:
    """The bytes ``Ours`` records for one step (an ``ActionTaken``), for the peers that append
    envelopes to this log directly."""
    from sia_engine.domain.events import ActionTaken, roundtrip

    return roundtrip(ActionTaken(action_id="a1", episode_id="train-3", version_id="0" * 64, actor="model",
                                 name="generate", inputs=PAYLOAD["inputs"], outputs=PAYLOAD["outputs"]))[0]


# -- this log ------------------------------------------------------------------------------------
class Ours:
    name = "sia-engine log"

    def __init__(self, d: Path) -> None:
        from sia_engine.domain.events import ActionTaken, RunStarted
        from sia_engine.domain.history import History
        from sia_engine.domain.scaffold import Scaffold
        from store import Store

        self.store = Store.create(d / "ours")
        self.store.log.init_branch("main")
        self.h = History.open(self.store.log, "main", blobs=self.store.blobs)
        self.h.record(RunStarted(run_id="b", task="bench", seed=0, base_model=BASE, scaffold=Scaffold(), engine_version="b", levers=("scaffold",)))
        self.Action = ActionTaken
        self.n = 0

    def _ev(self) -> Any:
        self.n += 1
        return self.Action(action_id=f"a{self.n}", episode_id="train-3", version_id=str(self.h.state.head), actor="model",
                           name="generate", inputs=PAYLOAD["inputs"], outputs=PAYLOAD["outputs"])

    def append(self, k: int) -> None:
        self.h.record(*(self._ev() for _ in range(k)))

    def state_at(self, depth: int) -> Any:
        from sia_engine.domain.history import rebuild

        return rebuild(self.store.log, "main", until_seq=depth)

    def fork_at(self, depth: int, name: str) -> None:
        from sia_engine.domain.history import fork

        fork(self.store.log, name, source="main", at_seq=depth, reason="bench", blobs=self.store.blobs)

    def list_all(self) -> int:
        return len(self.store.log.read("main"))

    can_reopen = True

    def reopen(self) -> None:
        """Close the store and open it again: nothing the open log held is held any more."""
        from store import Store

        root = self.store.root
        self.store.close()
        self.store = Store.open(root)

    def close(self) -> None:
        self.store.close()


class OursLogOnly(Ours):
    """The log's own append (envelopes only: no domain event, no reducer), as the recorders are,
    of the bytes ``Ours`` records (the same event: DuckDB's JSON insert costs more per byte, so a
    smaller payload here would count payload size as ``History``'s overhead)."""

    name = "sia-engine log.append"

    def __init__(self, d: Path) -> None:
        from store import DuckEventLog

        self.log = DuckEventLog(d / "raw.duckdb")
        self.log.init_branch("main")
        self.head: str | None = None
        self.event = step_event()

    def append(self, k: int) -> None:
        ids = self.log.append("main", [self.event] * k, expected_head=self.head)
        self.head = ids[-1]

    def close(self) -> None:
        self.log.close()


# -- eventsourcing ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _es_classes() -> tuple[type, type]:
    """eventsourcing's aggregate and application, defined once (it registers classes by name)."""
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    class Agent(Aggregate):
        def __init__(self) -> None:
            self.actions: int = 0
            self.examples: list[str] = []

        @event("Acted")
        def act(self, payload: dict) -> None:  # type: ignore[type-arg]
            self.actions += 1

        @event("ExampleAdded")
        def add_example(self, text: str) -> None:
            self.examples.append(text)

        @event("Seeded")
        def seed_from(self, actions: int, examples: list[str]) -> None:
            self.actions, self.examples = actions, list(examples)

    class App(Application):
        snapshotting_intervals = {Agent: 250}

    return Agent, App


def eventsourcing_peer(kind: str) -> type:
    Agent, App = _es_classes()

    class Peer:
        name = f"eventsourcing {kind}"

        can_reopen = kind == "SQLite"

        def __init__(self, d: Path) -> None:
            env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(d / "es.sqlite")} if kind == "SQLite" else {}
            self.path = d / "es.sqlite"
            self.env = env
            self.app = App(env=env)
            self.agent = Agent()
            self.app.save(self.agent)

        def append(self, k: int) -> None:
            for _ in range(k):
                self.agent.act(PAYLOAD)
            self.app.save(self.agent)

        def state_at(self, depth: int) -> Any:
            return self.app.repository.get(self.agent.id, version=depth)

        def fork_at(self, depth: int, name: str) -> None:
            at = self.app.repository.get(self.agent.id, version=depth)
            new = Agent()
            new.seed_from(at.actions, at.examples)
            self.app.save(new)

        def list_all(self) -> int:
            return len(list(self.app.recorder.select_events(self.agent.id)))  # type: ignore[attr-defined]

        def reopen(self) -> None:
            self.app.close()
            self.app = App(env=self.env)

        def add_example(self, text: str) -> None:
            self.agent.add_example(text)
            self.app.save(self.agent)

        def close(self) -> None:
            self.app.close()

    return Peer


# -- LangGraph ---------------------------------------------------------------------------------------
class LangGraphPeer:
    name = "LangGraph SqliteSaver"

    def __init__(self, d: Path) -> None:
        import sqlite3

        from langgraph.checkpoint.base import empty_checkpoint
        from langgraph.checkpoint.sqlite import SqliteSaver

        self.path = d / "lg.sqlite"
        self.conn = sqlite3.connect(str(self.path), check_same_thread=False)
        self.saver = SqliteSaver(self.conn)
        self.saver.setup()
        self.config: dict[str, Any] = {"configurable": {"thread_id": "main", "checkpoint_ns": ""}}
        self.cp = empty_checkpoint()
        self.step = 0
        self.ids: list[dict[str, Any]] = []
        self.state: dict[str, Any] = {"examples": []}

    def _put(self, values: dict[str, Any]) -> None:
        from langgraph.checkpoint.base import create_checkpoint

        self.step += 1
        self.cp = create_checkpoint(self.cp, None, self.step)
        self.cp["channel_values"] = values
        self.config = self.saver.put(self.config, self.cp, {"source": "loop", "step": self.step, "parents": {}}, {})
        self.ids.append(self.config)

    def append(self, k: int) -> None:
        # a graph saves one checkpoint per step: k events in one step are one checkpoint of k
        self._put({"events": [PAYLOAD] * k})

    def state_at(self, depth: int) -> Any:
        return self.saver.get_tuple(self.ids[min(depth, len(self.ids) - 1)])

    def fork_at(self, depth: int, name: str) -> None:
        at = self.saver.get_tuple(self.ids[min(depth, len(self.ids) - 1)])
        assert at is not None
        self.saver.put(at.config, at.checkpoint, {"source": "fork", "step": -1, "parents": {}}, {})

    def list_all(self) -> int:
        return len(list(self.saver.list({"configurable": {"thread_id": "main"}})))

    def add_example(self, text: str) -> None:
        self.state = {"examples": [*self.state["examples"], text]}
        self._put({"scaffold": self.state})

    def close(self) -> None:
        self.conn.close()


class DuckArrow:
    name = "raw DuckDB + Arrow"

    def __init__(self, d: Path) -> None:
        import duckdb

        self.con = duckdb.connect(str(d / "raw-arrow.duckdb"))
        self.con.execute("CREATE TABLE events (seq BIGINT, kind VARCHAR, payload VARCHAR)")
        self.seq = 0
        self.data = json.dumps(PAYLOAD)

    def append(self, k: int) -> None:
        import pyarrow as pa

        t = pa.table({"seq": list(range(self.seq, self.seq + k)), "kind": ["action_taken"] * k, "payload": [self.data] * k})
        self.con.register("_b", t)
        self.con.execute("INSERT INTO events SELECT * FROM _b")
        self.con.unregister("_b")
        self.seq += k

    def state_at(self, depth: int) -> Any:
        return self.con.execute("SELECT * FROM events WHERE seq <= ? ORDER BY seq", [depth]).fetchall()

    def fork_at(self, depth: int, name: str) -> None:
        self.con.execute(f"CREATE TABLE fork_{name} AS SELECT * FROM events WHERE seq <= ?", [depth])

    def list_all(self) -> int:
        return len(self.con.execute("SELECT * FROM events ORDER BY seq").fetchall())

    def close(self) -> None:
        self.con.close()


def run(n: int, big: int, writers: int) -> None:
    try:  # DuckDB's first Arrow scan in a process imports pandas (0.5 s here): paid before timing, as by any process that has inserted once
        import pandas  # noqa: F401
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:  # and its first Arrow conversion (~50 ms), which the first peer timed would pay
        warm = OursLogOnly(Path(tmp))
        warm.append(1000)
        warm.close()
    peers: list[Any] = [Ours, OursLogOnly, eventsourcing_peer("SQLite"), eventsourcing_peer("POPO"), LangGraphPeer, DuckArrow]
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cls in peers:
            d = Path(tempfile.mkdtemp(dir=tmp))
            p = cls(d)
            r: dict[str, float] = {}
            t0 = time.perf_counter()
            for _ in range(n):
                p.append(1)
            r["append1"] = n / (time.perf_counter() - t0)
            p.append(100)  # warm-up, untimed
            t0 = time.perf_counter()
            for _ in range(n // 10):
                p.append(100)
            r["append100"] = (n // 10) * 100 / (time.perf_counter() - t0)
            if not isinstance(p, OursLogOnly):
                depth = n // 2
                r["state_ms"] = timed(lambda: p.state_at(depth)) * 1000
                k = iter(range(100))
                r["fork_ms"] = timed(lambda: p.fork_at(depth, f"f{next(k)}")) * 1000
                r["list_ms"] = timed(lambda: p.list_all(), 3) * 1000
                # depths not asked about before, each once: what a cache of answers cannot serve
                r["state_new_ms"] = fresh(p.state_at, [depth + 37 * (i + 1) for i in range(5)])
                r["fork_new_ms"] = fresh(lambda d: p.fork_at(d, f"f{next(k)}"), [depth - 41 * (i + 1) for i in range(5)])
                if getattr(p, "can_reopen", False):  # and after reopening: nothing the process held
                    p.reopen()
                    r["state_reopened_ms"] = fresh(p.state_at, [depth + 300 + 37 * i for i in range(5)])
                    r["fork_reopened_ms"] = fresh(lambda d: p.fork_at(d, f"f{next(k)}"), [depth - 300 - 41 * i for i in range(5)])
            p.close()
            rows[p.name] = r
            print(f"  measured {p.name}", flush=True)
        import peers_growth
        import peers_writers

        growth = peers_growth.growth_bytes(Path(tmp), 500)
        print("  measured bytes per step at 500 steps", flush=True)
        growth_big = peers_growth.growth_bytes(Path(tmp), big) if big else {}
        print(f"  measured bytes per step at {big} steps", flush=True)

        many = peers_writers.measure(Path(tempfile.mkdtemp(dir=tmp)), writers, max(1, n // (2 * writers)))
    ours = rows["sia-engine log"]
    print(f"\n{n} appends of 1 event, {n // 10} of 100; state, fork at depth {n // 2}; list all (the 100-per-commit appends included)")
    print(f"{writers} writers: one event per commit each, {max(1, n // (2 * writers))} each; bytes/step at 500 and {big} steps")
    print(f"{'':>24} {'1/commit ev/s':>14} {'100/commit ev/s':>16} {f'{writers} writers ev/s':>16} {'state ms':>9} {'fork ms':>8} "
          f"{'list ms':>8} {'bytes/step':>11} {f'at {big}':>11}")
    for name, r in rows.items():
        def f(key: str, fmt: str) -> str:
            return format(r[key], fmt) if key in r else "-"

        def g(table: dict[str, float]) -> str:
            return format(table[name], ',.0f') if name in table else "-"
        print(f"{name:>24} {f('append1', ',.0f'):>14} {f('append100', ',.0f'):>16} {g(many):>16} {f('state_ms', '.2f'):>9} "
              f"{f('fork_ms', '.2f'):>8} {f('list_ms', '.1f'):>8} {g(growth):>11} {g(growth_big):>11}")
    print("\nstate and fork at a depth, ms: the same depth asked again (as above), depths not asked before, and after reopening the store")
    print(f"{'':>24} {'state again':>12} {'state new':>10} {'reopened':>9} {'fork again':>11} {'fork new':>9} {'reopened':>9}")
    for name, r in rows.items():
        if "state_ms" in r:
            cells = [format(r[k], ".2f") if k in r else "-" for k in
                     ("state_ms", "state_new_ms", "state_reopened_ms", "fork_ms", "fork_new_ms", "fork_reopened_ms")]
            print(f"{name:>24} {cells[0]:>12} {cells[1]:>10} {cells[2]:>9} {cells[3]:>11} {cells[4]:>9} {cells[5]:>9}")
    print("\nthis log vs each peer (>1: this log is faster / smaller)")
    for name, r in rows.items():
        if name == "sia-engine log":
            continue
        parts = [f"1/commit {ours['append1'] / r['append1']:.2f}x", f"100/commit {ours['append100'] / r['append100']:.2f}x"]
        if "state_ms" in r:
            parts += [f"state {r['state_ms'] / ours['state_ms']:.2f}x", f"fork {r['fork_ms'] / ours['fork_ms']:.2f}x",
                      f"state new {r['state_new_ms'] / ours['state_new_ms']:.2f}x", f"fork new {r['fork_new_ms'] / ours['fork_new_ms']:.2f}x",
                      f"list {r['list_ms'] / ours['list_ms']:.2f}x"]
            if "state_reopened_ms" in r:
                parts += [f"state reopened {r['state_reopened_ms'] / ours['state_reopened_ms']:.2f}x",
                          f"fork reopened {r['fork_reopened_ms'] / ours['fork_reopened_ms']:.2f}x"]
        if name in growth:
            parts.append(f"bytes/step {growth[name] / growth['sia-engine log']:.2f}x")
        if name in growth_big:
            parts.append(f"bytes/step at {big} {growth_big[name] / growth_big['sia-engine log']:.2f}x")
        if name in many and "sia-engine log" in many:
            parts.append(f"{writers} writers {many['sia-engine log'] / many[name]:.2f}x")
        print(f"  vs {name}: " + ", ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setup", action="store_true", help=f"pip install the peers first: {' '.join(PEERS)}")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--big", type=int, default=10_000, help="steps of the second bytes-per-step measure (0: skip it)")
    ap.add_argument("--writers", type=int, default=4, help="concurrent writers")
    a = ap.parse_args()
    if a.setup:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *PEERS], check=True)
    try:
        import eventsourcing  # noqa: F401
        import langgraph.checkpoint.sqlite  # noqa: F401
    except ImportError as e:
        sys.exit(f"a peer is not installed ({e}); run: python bench/bench_peers.py --setup")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run(a.n, a.big, a.writers)


if __name__ == "__main__":
    main()
