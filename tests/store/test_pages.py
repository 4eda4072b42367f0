"""Issue 24, Deliver 1: reads served from memory (the held tail, pages read from DuckDB before)
without a flush, and in every case the same events as DuckDB's own query returns."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store import DuckEventLog, EventNotFound, NewEvent
from store.duck.pages import PAGE
from store.duck.tail import Tail
from store.journal import Batch


def ev(i: int, kind: str = "k") -> NewEvent:
    return NewEvent(kind, 1, f'{{"i":{i}}}'.encode())


def _truth(log: DuckEventLog, branch: str, **kw: object) -> list[object]:
    """What DuckDB's own query returns (it flushes first)."""
    return [log._env(r) for r in log._query(branch, kw.get("until_seq"), kw.get("after_seq"), kw.get("kinds")).fetchall()]  # type: ignore[arg-type]


def _no_flush(log: DuckEventLog, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: object, **kw: object) -> object:
        raise AssertionError("the journal was flushed")

    monkeypatch.setattr(log._writer, "flush", refuse)
    monkeypatch.setattr(log, "_query", refuse)
    monkeypatch.setattr(log, "_one", refuse)


def test_old_events_after_reopening_cost_one_query_per_page(tmp_path: Path) -> None:
    p = tmp_path / "log.duckdb"
    with DuckEventLog(p) as log:
        log.init_branch("main")
        ids = log.append("main", [ev(i, "a" if i % 3 else "b") for i in range(1000)], expected_head=None)
    with DuckEventLog(p) as log:
        pages = log._pages
        assert [e.id for e in log.read("main", after_seq=300, until_seq=310)] == ids[301:311]
        assert pages.queries == 1
        assert log.at("main", 305).id == ids[305] and log.at("main", 2 * PAGE + 1).parent == ids[2 * PAGE]
        assert [e.seq for e in log.read("main", after_seq=2 * PAGE, until_seq=2 * PAGE + 6, kinds=["b"])] == [
            s for s in range(2 * PAGE + 1, 2 * PAGE + 7) if s % 3 == 0
        ]
        assert pages.queries == 1  # the same page: held
        assert log.read("main", after_seq=100, until_seq=700) == _truth(log, "main", after_seq=100, until_seq=700)
        assert pages.queries == 2  # one query for every page it lacked
        with pytest.raises(EventNotFound):
            log.at("main", 1000)


def test_a_read_across_the_committed_head_moves_nothing_out_of_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tail held only in part: what DuckDB has comes from a page, what is journalled from memory."""
    p = tmp_path / "log.duckdb"
    with DuckEventLog(p) as log:
        log.init_branch("main")
        ids = log.append("main", [ev(i) for i in range(600)], expected_head=None)
    with DuckEventLog(p) as log:
        for i in range(5):
            ids += log.append("main", [ev(1000 + i)], expected_head=ids[-1])
        log.fork("f", source="main", at_seq=590)  # a ref line in the journal
        more = log.append("f", [ev(7)], expected_head=ids[590])
        with monkeypatch.context() as m:
            _no_flush(log, m)
            got = log.read("main", after_seq=580)
            assert [e.id for e in got] == ids[581:] and [e.seq for e in got] == list(range(581, 605))
            fork_read = log.read("f", until_seq=0)
            assert log.at("main", 599).id == ids[599] and log.at("main", 603).id == ids[603]
        assert log.read("main", after_seq=580) == _truth(log, "main", after_seq=580)
        assert fork_read == _truth(log, "f", until_seq=0) and fork_read[-1].id == more[0]


def test_a_long_read_still_queries(tmp_path: Path) -> None:
    with DuckEventLog(tmp_path / "log.duckdb", flush_every=10) as log:
        log.init_branch("main")
        ids = log.append("main", [ev(i) for i in range(PAGE * 40)], expected_head=None)
        log._writer.tail.clear()
        assert [e.id for e in log.read("main")] == ids
        assert log._pages.queries == 0 and log._pages.bytes == 0  # a whole history is not held


def test_pages_are_held_up_to_their_budget(tmp_path: Path) -> None:
    p = tmp_path / "log.duckdb"
    with DuckEventLog(p) as log:
        log.init_branch("main")
        log.append("main", [NewEvent("k", 1, b'{"pad":"' + b"x" * 1000 + b'"}')] * (PAGE * 8), expected_head=None)
    with DuckEventLog(p) as log:
        log._pages.max_bytes = 5 * PAGE * 1300 // 2  # two pages of these, not three
        for page in range(8):
            log.read("main", after_seq=page * PAGE, until_seq=page * PAGE + 2)
        assert log._pages.bytes <= log._pages.max_bytes and len(log._pages._held) == 2
        before = log._pages.queries
        log.read("main", after_seq=7 * PAGE, until_seq=7 * PAGE + 2)  # the latest: held
        log.read("main", after_seq=0, until_seq=2)  # the first: dropped, read again
        assert log._pages.queries == before + 1


def _batch(n: int, size: int = 10, start: int = 0) -> Batch:
    return Batch("x", -1, None, None, [f"id{start + i}" for i in range(n)], ["k"] * n, [1] * n, ["p" * size] * n)  # type: ignore[arg-type]


def test_the_tail_drops_the_oldest_batch_of_any_branch_first() -> None:
    t = Tail(max_bytes=3 * (10 + 240) * 4)  # room for three batches of four events
    t.add("a", 0, _batch(4))
    t.add("b", 0, _batch(4, start=100))
    t.add("a", 4, _batch(4, start=4))
    assert t.covers("a", -1, 7) and t.covers("b", -1, 3)
    t.add("b", 4, _batch(4, start=104))  # a's oldest goes
    assert not t.covers("a", -1, 7) and t.covers("a", 3, 7) and t.covers("b", -1, 7)
    assert [e.id for e in t.envelopes("a", 3, 7)] == ["id4", "id5", "id6", "id7"]
    assert t.at("a", 4) is not None and t.at("a", 4).parent is None and t.at("a", 5).parent == "id4"  # type: ignore[union-attr]
    t.forget("b")
    assert t.bytes == 4 * 250 and not t.covers("b", 5, 6)
    t.add("c", 0, _batch(200, size=100))  # more than the whole budget: not held, nothing else dropped
    assert not t.covers("c", -1, 0) and t.covers("a", 3, 7)
    t.add("a", 9, _batch(1))  # not contiguous: the run starts again
    assert t.covers("a", 8, 9) and not t.covers("a", 7, 8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["append", "big", "flush", "fork", "read", "reopen"]), st.integers(0, 10_000)), max_size=14))
def test_reads_agree_with_duckdb_whatever_is_held(tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]) -> None:
    """Appends, flushes, forks and reopenings in any order, with a tail and pages held small:
    every read answers what DuckDB's own query does."""
    p = tmp_path_factory.mktemp("log") / "log.duckdb"
    log = DuckEventLog(p, flush_every=7)
    log._writer.tail.max_bytes = 40 * 260
    log.init_branch("main")
    heads: dict[str, str | None] = {"main": None}
    try:
        for op, r in ops:
            names = sorted(heads)
            b = names[r % len(names)]
            if op in ("append", "big"):
                n = 1 + r % (3 if op == "append" else PAGE + 40)
                heads[b] = log.append(b, [ev(r + i, "ab"[i % 2]) for i in range(n)], expected_head=heads[b])[-1]
            elif op == "flush":
                log.flush()
            elif op == "fork" and log.branch(b).head_seq >= 0:
                at = r % (log.branch(b).head_seq + 1)
                name = f"f{len(heads)}"
                heads[name] = log.fork(name, source=b, at_seq=at).base_id
            elif op == "reopen":
                log.close()
                log = DuckEventLog(p, flush_every=7)
                log._writer.tail.max_bytes = 40 * 260
            head = log.branch(b).head_seq
            if head >= 0:
                lo = r % (head + 1)
                hi = lo + (r // 7) % 50
                kinds = ["b"] if r % 5 == 0 else None
                got = log.read(b, after_seq=lo - 1, until_seq=min(hi, head), kinds=kinds)
                at = log.at(b, lo)
                assert got == _truth(log, b, after_seq=lo - 1, until_seq=min(hi, head), kinds=kinds)
                assert at == log.get(at.id)
        assert log.verify().ok
    finally:
        log.close()
