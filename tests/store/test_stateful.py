"""A hypothesis state machine drives the DuckDB log and the in-memory twin side by side."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from store import DuckEventLog, MemoryEventLog, NewEvent, StoreError
from tests.conftest import FakeClock

payloads = st.builds(
    lambda k, v: NewEvent(k, 1, ('{"v":%d}' % v).encode()), st.sampled_from(["a", "b", "c.d"]), st.integers(0, 5)
)


def _outcome(fn):  # type: ignore[no-untyped-def]
    try:
        return ("ok", fn())
    except StoreError as e:
        return (type(e).__name__, str(e))


class DuckVersusMemory(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.duck = DuckEventLog(Path(self.dir.name) / "log.duckdb", clock=FakeClock())
        self.mem = MemoryEventLog(clock=FakeClock())
        self.names: list[str] = []

    def teardown(self) -> None:
        self.duck.close()
        self.dir.cleanup()

    def both(self, fn):  # type: ignore[no-untyped-def]
        a, b = _outcome(lambda: fn(self.duck)), _outcome(lambda: fn(self.mem))
        assert a == b
        return a

    @rule(name=st.sampled_from(["main", "exp", "x/y"]))
    def init_branch(self, name: str) -> None:
        if self.both(lambda log: log.init_branch(name).name)[0] == "ok":
            self.names.append(name)

    @precondition(lambda self: self.names)
    @rule(data=st.data(), events=st.lists(payloads, min_size=1, max_size=5), stale=st.booleans())
    def append(self, data: st.DataObject, events: list[NewEvent], stale: bool) -> None:
        b = data.draw(st.sampled_from(self.names))
        head = self.mem.branch(b).head_id
        expected = ("0" * 64 if head is None else None) if stale else head
        self.both(lambda log: log.append(b, events, expected_head=expected))

    @precondition(lambda self: self.names)
    @rule(data=st.data(), name=st.text("abz", min_size=1, max_size=3))
    def fork(self, data: st.DataObject, name: str) -> None:
        src = data.draw(st.sampled_from(self.names))
        seq = data.draw(st.integers(-1, self.mem.branch(src).head_seq + 1))
        if self.both(lambda log: log.fork(name, source=src, at_seq=seq).name)[0] == "ok":
            self.names.append(name)

    @precondition(lambda self: self.names)
    @rule(data=st.data())
    def read_until(self, data: st.DataObject) -> None:
        b = data.draw(st.sampled_from(self.names))
        until = data.draw(st.none() | st.integers(-1, 8))
        kinds = data.draw(st.none() | st.lists(st.sampled_from(["a", "b", "c.d"]), max_size=2))
        self.both(lambda log: [(e.id, e.ref, e.kind, e.payload) for e in log.read(b, until_seq=until, kinds=kinds)])

    @invariant()
    def same_refs_and_verified(self) -> None:
        strip = lambda bs: [(b.name, b.base_branch, b.base_seq, b.base_id, b.head_seq, b.head_id) for b in bs]  # noqa: E731
        assert strip(self.duck.branches()) == strip(self.mem.branches())
        assert self.duck.count() == self.mem.count()
        assert self.duck.verify().ok and self.mem.verify().ok


DuckVersusMemory.TestCase.settings = settings(max_examples=int(__import__("os").environ.get("SIA_STATEFUL_EXAMPLES", "25")), stateful_step_count=20, deadline=None)
TestDuckVersusMemory = DuckVersusMemory.TestCase
