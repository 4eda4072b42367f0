"""Issue 24, Deliver 1: reads served from memory (the held tail, pages read from DuckDB before)
without a flush, and in every case the same events as DuckDB's own query returns."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store import DuckEventLog, EventNotFound, NewEvent
from store.duck.pages import PAGE
from store.duck.tail import _BATCH_COST, _EVENT_COST, Tail
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
    one = 4 * (10 + _EVENT_COST) + _BATCH_COST  # a batch of four events of 10 bytes
    t = Tail(max_bytes=3 * one)  # room for three
    t.add("a", 0, _batch(4))
    t.add("b", 0, _batch(4, start=100))
    t.add("a", 4, _batch(4, start=4))
    assert t.covers("a", -1, 7) and t.covers("b", -1, 3)
    t.add("b", 4, _batch(4, start=104))  # a's oldest goes
    assert not t.covers("a", -1, 7) and t.covers("a", 3, 7) and t.covers("b", -1, 7)
    assert [e.id for e in t.envelopes("a", 3, 7)] == ["id4", "id5", "id6", "id7"]
    assert t.at("a", 4) is not None and t.at("a", 4).parent is None and t.at("a", 5).parent == "id4"  # type: ignore[union-attr]
    t.forget("b")
    assert t.bytes == one and not t.covers("b", 5, 6)
    t.add("c", 0, _batch(200, size=100))  # more than the whole budget: not held, nothing else dropped
    assert not t.covers("c", -1, 0) and t.covers("a", 3, 7)
    t.add("a", 9, _batch(1))  # not contiguous: the run starts again
    assert t.covers("a", 8, 9) and not t.covers("a", 7, 8)


def _key(e: object) -> tuple[object, ...]:
    return (e.id, e.parent, e.branch, e.seq, e.kind, e.schema, e.payload)  # type: ignore[attr-defined]


def _small(log: DuckEventLog) -> None:
    log._writer.tail.max_bytes = 30 * (_EVENT_COST + 10) + 10 * _BATCH_COST
    log._pages.max_bytes = 3 * PAGE * 600


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.tuples(st.sampled_from(["append", "append", "big", "flush", "fork", "import", "reopen"]), st.integers(0, 10**6)), max_size=16),
    st.sampled_from([3, 7, 10_000]),
)
def test_reads_agree_with_a_log_in_memory_whatever_is_held(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]], flush_every: int
) -> None:
    """Appends (journalled and direct), flushes, forks, imports and reopenings in any order, with
    a small tail and small pages, and nothing flushed between them but what they flush: after
    each, a read (edges included: before seq 0, past the head, kinds) and an ``at`` answer what
    ``MemoryEventLog`` holds; at the end DuckDB holds the same."""
    from datetime import UTC, datetime

    from store import BranchImport, BranchInfo
    from store.memory import MemoryEventLog

    t = datetime(2026, 1, 1, tzinfo=UTC)
    p = tmp_path_factory.mktemp("log") / "log.duckdb"
    log = DuckEventLog(p, flush_every=flush_every, clock=lambda: t)
    _small(log)
    mem = MemoryEventLog(clock=lambda: t)
    for x in (log, mem):
        x.init_branch("main")
    try:
        for op, r in ops:
            names = [b.name for b in mem.branches()]
            b = names[r % len(names)]
            head = mem.branch(b)
            if op in ("append", "big"):
                n = 1 + r % 4 if op == "append" else 256 + r % 40
                evs = [ev(r + i, "ab"[(r + i) % 2]) for i in range(n)]
                assert log.append(b, evs, expected_head=head.head_id) == mem.append(b, evs, expected_head=head.head_id)
            elif op == "flush":
                log.flush()
            elif op == "fork" and head.head_seq >= 0:
                for x in (log, mem):
                    x.fork(f"f{len(names)}", source=b, at_seq=r % (head.head_seq + 1))
            elif op == "import":
                evs = tuple(ev(r + i, "a") for i in range(1 + r % 5))
                imps = [BranchImport(b, head.head_id, evs)]
                if head.head_seq >= 0 and r % 2:
                    base = mem.at(b, r % (head.head_seq + 1))
                    info = BranchInfo(f"f{len(names)}", b, base.seq, base.id, -1, base.id, t)
                    imps.append(BranchImport(info.name, base.id, evs[:2], create=info))
                for x in (log, mem):
                    x.import_branches(imps)
            elif op == "reopen":
                log.close()
                log = DuckEventLog(p, flush_every=flush_every, clock=lambda: t)
                _small(log)
            names = [x.name for x in mem.branches()]
            b = names[r // 7 % len(names)]
            h = mem.branch(b).head_seq
            after = [None, -3, -1, r % (h + 4)][r // 3 % 4]
            until = [None, -1, h + 2, r // 11 % (h + 3)][r // 5 % 4]
            kinds = [None, ["a"], []][r % 3]
            got = log.read(b, after_seq=after, until_seq=until, kinds=kinds)
            assert [_key(e) for e in got] == [_key(e) for e in mem.read(b, after_seq=after, until_seq=until, kinds=kinds)]
            if h >= 0:
                assert _key(log.at(b, r % (h + 1))) == _key(mem.at(b, r % (h + 1)))
        log.close()
        log = DuckEventLog(p)
        for x in mem.branches():
            assert [_key(e) for e in log.read(x.name)] == [_key(e) for e in mem.read(x.name)]
        assert log.verify().ok
    finally:
        log.close()


def test_what_is_held_costs_about_what_it_counts(tmp_path: Path) -> None:
    """The budgets are of real memory (tracemalloc): a tail of one-event batches or of larger
    ones, and pages read after reopening."""
    import gc
    import tracemalloc
    from datetime import UTC, datetime

    from store.envelope import seal

    for per in (1, 50):
        t = Tail(max_bytes=4 << 20)
        gc.collect()
        tracemalloc.start()
        try:
            head, n = None, 0
            for i in range(60_000 // per):
                s = seal("main", head, [NewEvent("step.done", 1, b'{"i":%d}' % (i * per + k)) for k in range(per)])
                t.add("main", n, Batch("main", n, head, datetime.now(UTC), s.ids, s.kinds, s.schemas, s.payloads))
                head, n = s.ids[-1], n + per
            gc.collect()
            real = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert t.bytes <= t.max_bytes and 0.7 * t.max_bytes < real < 1.3 * t.max_bytes, (per, t.bytes, real)
    p = tmp_path / "log.duckdb"
    with DuckEventLog(p) as log:
        log.init_branch("main")
        log.append("main", [NewEvent("step.done", 1, b'{"i":%d}' % i) for i in range(PAGE * 60)], expected_head=None)
    with DuckEventLog(p) as log:
        log.read("main", after_seq=0, until_seq=1)  # DuckDB's own first-use allocations, before counting
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for page in range(1, 60):
                log.read("main", after_seq=page * PAGE, until_seq=page * PAGE + 1)
            gc.collect()
            real = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        held = log._pages.bytes - sum(len(e.payload) + 560 for e in log._pages._held[("main", 0)])
        assert 0.7 * held < real < 1.3 * held, (held, real)
