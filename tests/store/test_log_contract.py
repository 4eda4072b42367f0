"""One contract suite for every EventLog backend (in-memory twin, DuckDB file, DuckDB :memory:)."""

from __future__ import annotations

from pathlib import Path

import pytest

from store import (
    BranchExists,
    BranchNotFound,
    ConcurrencyError,
    DuckEventLog,
    EventLog,
    EventNotFound,
    InvalidEnvelope,
    InvalidName,
    MemoryEventLog,
    NewEvent,
    StoreError,
    event_id,
)
from tests.conftest import FakeClock


def ev(i: int, kind: str = "thing_happened") -> NewEvent:
    return NewEvent(kind, 1, f'{{"i":{i},"text":"é{i}"}}'.encode())


class LogContract:
    """Mixin: subclasses provide ``make_log``."""

    def make_log(self, tmp_path: Path) -> EventLog:
        raise NotImplementedError

    @pytest.fixture
    def log(self, tmp_path: Path) -> EventLog:
        log = self.make_log(tmp_path)
        yield log
        log.close()

    def test_is_an_event_log(self, log: EventLog) -> None:
        assert isinstance(log, EventLog)

    def test_import_branches_is_all_or_nothing(self, log: EventLog) -> None:
        from datetime import UTC, datetime

        from store import BranchImport, BranchInfo

        log.init_branch("main")
        ids = log.append("main", [ev(0), ev(1)], expected_head=None)
        now = datetime.now(UTC)
        root = BranchImport("other", None, (ev(5), ev(6)), BranchInfo("other", None, None, None, -1, None, now))
        fork = BranchImport("f", ids[0], (ev(7),), BranchInfo("f", "main", 0, ids[0], -1, ids[0], now))
        more = BranchImport("main", ids[1], (ev(2),))
        taken = BranchImport("main", None, (), BranchInfo("main", None, None, None, -1, None, now))  # a name in use: the whole import fails
        with pytest.raises(BranchExists):
            log.import_branches([root, fork, taken])
        with pytest.raises(StoreError, match="names a branch twice"):
            log.import_branches([root, more, more])
        assert sorted(b.name for b in log.branches()) == ["main"] and log.count() == 2
        stale = BranchImport("main", ids[0], (ev(2),))  # a head that moved: nothing of it either
        with pytest.raises(ConcurrencyError):
            log.import_branches([root, stale])
        assert sorted(b.name for b in log.branches()) == ["main"] and log.count() == 2
        log.import_branches([root, fork, more])
        assert log.count() == 6 and [e.seq for e in log.read("f")] == [0, 0] and log.branch("main").head_seq == 2
        assert log.read("f")[-1].parent == ids[0]

    def test_append_and_read_back(self, log: EventLog) -> None:
        log.init_branch("main")
        ids = log.append("main", [ev(0), ev(1), ev(2)], expected_head=None)
        got = log.read("main")
        assert [e.id for e in got] == ids
        assert [e.seq for e in got] == [0, 1, 2]
        assert got[0].parent is None and got[1].parent == ids[0] and got[2].parent == ids[1]
        assert got[1].payload == '{"i":1,"text":"é1"}'.encode()
        assert got[0].id == event_id(None, "main", "thing_happened", 1, got[0].payload)
        assert log.branch("main").head_id == ids[-1] and log.branch("main").head_seq == 2
        assert log.count() == 3

    def test_id_chains_parent_branch_kind_schema_payload(self, log: EventLog) -> None:
        log.init_branch("main")
        [a] = log.append("main", [NewEvent("k", 7, b"{}")], expected_head=None)
        import hashlib

        assert a == hashlib.sha256(b"\nmain\nk\n7\n{}").hexdigest()
        [b] = log.append("main", [NewEvent("k", 7, b"{}")], expected_head=a)
        assert b == hashlib.sha256(f"{a}\nmain\nk\n7\n{{}}".encode()).hexdigest()

    def test_batches_continue_the_chain(self, log: EventLog) -> None:
        log.init_branch("main")
        a = log.append("main", [ev(0)], expected_head=None)
        b = log.append("main", [ev(1), ev(2)], expected_head=a[-1])
        assert log.read("main")[1].parent == a[0]
        assert log.branch("main").head_id == b[-1]

    def test_stale_head_is_refused_and_nothing_written(self, log: EventLog) -> None:
        log.init_branch("main")
        a = log.append("main", [ev(0)], expected_head=None)
        log.append("main", [ev(1)], expected_head=a[0])
        with pytest.raises(ConcurrencyError) as exc:
            log.append("main", [ev(2)], expected_head=a[0])
        assert exc.value.expected == a[0]
        assert log.count() == 2
        with pytest.raises(ConcurrencyError):
            log.append("main", [ev(2)], expected_head=None)

    def test_concurrency_message(self, log: EventLog) -> None:
        log.init_branch("main")
        [a] = log.append("main", [ev(0)], expected_head=None)
        with pytest.raises(ConcurrencyError) as exc:
            log.append("main", [ev(1)], expected_head=None)
        assert str(exc.value) == (
            f"head of branch 'main' moved: expected an empty history, found {a}; nothing was appended: "
            "re-read the branch and retry against its current head"
        )

    def test_bad_batch_is_all_or_nothing(self, log: EventLog) -> None:
        log.init_branch("main")
        with pytest.raises(InvalidEnvelope) as exc:
            log.append("main", [ev(0), NewEvent("k", 1, b'{"a":'), ev(2)], expected_head=None)
        assert exc.value.index == 1
        assert str(exc.value).startswith("event 1 of the batch was rejected: payload is not UTF-8 JSON")
        assert log.count() == 0 and log.branch("main").head_id is None

    @pytest.mark.parametrize(
        "bad, fragment",
        [
            (NewEvent("Bad Kind", 1, b"{}"), "invalid event kind 'Bad Kind'"),
            (NewEvent("k", 0, b"{}"), "schema must be an int in 1..2147483647, got 0"),
            (NewEvent("k", True, b"{}"), "schema must be an int"),
            (NewEvent("k", 1, "{}"), "payload must be bytes of UTF-8 JSON, got str"),
            (NewEvent("k", 1, b"\xff{}"), "payload is not UTF-8 JSON"),
            (NewEvent("k", 1, b"{} {}"), "payload is not UTF-8 JSON"),
            ("not an event", "expected a NewEvent, got str"),
        ],
    )
    def test_invalid_events_are_typed_errors(self, log: EventLog, bad: object, fragment: str) -> None:
        log.init_branch("main")
        with pytest.raises(InvalidEnvelope) as exc:
            log.append("main", [bad], expected_head=None)  # type: ignore[list-item]
        assert fragment in str(exc.value)
        assert log.count() == 0

    def test_empty_batch_is_refused(self, log: EventLog) -> None:
        log.init_branch("main")
        with pytest.raises(InvalidEnvelope, match="the batch was rejected: it is empty"):
            log.append("main", [], expected_head=None)

    def test_unknown_branch(self, log: EventLog) -> None:
        log.init_branch("main")
        with pytest.raises(BranchNotFound) as exc:
            log.append("mian", [ev(0)], expected_head=None)
        assert str(exc.value) == "branch 'mian' does not exist (existing: main); create it with init_branch() or fork()"

    def test_branch_names(self, log: EventLog) -> None:
        for bad in ["", "-x", "a b", "a\nb", "x" * 129, None, "a/../../x", "a/", "a//b", "/a", "..", "a/.b", "a/-b"]:
            with pytest.raises(InvalidName):
                log.init_branch(bad)  # type: ignore[arg-type]
        log.init_branch("exp/1.a_b-c")
        with pytest.raises(BranchExists, match="branch 'exp/1.a_b-c' already exists"):
            log.init_branch("exp/1.a_b-c")

    def test_fork_reads_ancestry_and_copies_nothing(self, log: EventLog) -> None:
        log.init_branch("main")
        ids = log.append("main", [ev(i) for i in range(5)], expected_head=None)
        info = log.fork("exp", source="main", at_seq=2)
        assert (info.base_branch, info.base_seq, info.base_id, info.head_id, info.head_seq) == ("main", 2, ids[2], ids[2], -1)
        assert log.count() == 5
        assert [e.id for e in log.read("exp")] == ids[:3]
        new = log.append("exp", [ev(10)], expected_head=ids[2])
        hist = log.read("exp")
        assert [e.id for e in hist] == [*ids[:3], *new]
        assert hist[-1].parent == ids[2] and hist[-1].seq == 0 and hist[-1].branch == "exp"
        # main is untouched
        assert [e.id for e in log.read("main")] == ids

    def test_fork_of_a_fork(self, log: EventLog) -> None:
        log.init_branch("main")
        a = log.append("main", [ev(0), ev(1)], expected_head=None)
        log.fork("b", source="main", at_seq=0)
        b = log.append("b", [ev(2), ev(3)], expected_head=a[0])
        log.fork("c", source="b", at_seq=1)
        c = log.append("c", [ev(4)], expected_head=b[1])
        assert [e.id for e in log.read("c")] == [a[0], *b, *c]
        assert [e.id for e in log.read("c", until_seq=-1)] == [a[0], *b]
        assert [e.ref for e in log.read("c", after_seq=-1)] == ["c#0"]
        assert log.segments("c") == [("main", 0), ("b", 1), ("c", 0)]
        assert log.segments("c", -1) == [("main", 0), ("b", 1), ("c", -1)]

    def test_identical_events_on_two_branches_do_not_collide(self, log: EventLog) -> None:
        log.init_branch("main")
        [a] = log.append("main", [ev(0)], expected_head=None)
        log.fork("x", source="main", at_seq=0)
        log.fork("y", source="main", at_seq=0)
        [x] = log.append("x", [ev(1)], expected_head=a)
        [y] = log.append("y", [ev(1)], expected_head=a)
        assert x != y
        assert log.get(x).branch == "x" and log.get(y).branch == "y"
        assert log.verify().ok

    def test_fork_point_must_exist(self, log: EventLog) -> None:
        log.init_branch("main")
        log.append("main", [ev(0)], expected_head=None)
        with pytest.raises(EventNotFound, match="main#5"):
            log.fork("x", source="main", at_seq=5)
        with pytest.raises(BranchNotFound):
            log.fork("x", source="nope", at_seq=0)
        assert [b.name for b in log.branches()] == ["main"]

    def test_read_until_seq_and_kinds(self, log: EventLog) -> None:
        log.init_branch("main")
        ids = log.append("main", [ev(0, "a"), ev(1, "b"), ev(2, "a"), ev(3, "b")], expected_head=None)
        assert [e.id for e in log.read("main", until_seq=1)] == ids[:2]
        assert [e.id for e in log.read("main", kinds=["a"])] == [ids[0], ids[2]]
        assert [e.id for e in log.read("main", after_seq=1)] == ids[2:]
        assert [e.id for e in log.iter_read("main", until_seq=2, batch_size=2)] == ids[:3]

    def test_get_at_find(self, log: EventLog) -> None:
        log.init_branch("main")
        ids = log.append("main", [ev(0), ev(1)], expected_head=None)
        assert log.get(ids[1]).seq == 1
        assert log.at("main", 0).id == ids[0]
        assert [e.id for e in log.find(ids[1][:10])] == [ids[1]]
        assert log.find("zz") == [] and log.find("") == []
        with pytest.raises(EventNotFound, match="no event main#2 in this log"):
            log.at("main", 2)
        with pytest.raises(EventNotFound):
            log.get("0" * 64)

    def test_branches_in_creation_order(self, log: EventLog) -> None:
        for n in ["z", "a", "m"]:
            log.init_branch(n)
        assert [b.name for b in log.branches()] == ["z", "a", "m"]

    def test_no_update_or_delete_in_the_api(self, log: EventLog) -> None:
        public = {n for n in dir(log) if not n.startswith("_")}
        assert not {n for n in public if any(w in n for w in ("update", "delete", "remove", "truncate", "rewrite", "set_head"))}

    def test_verify_clean(self, log: EventLog) -> None:
        log.init_branch("main")
        a = log.append("main", [ev(i) for i in range(10)], expected_head=None)
        log.fork("x", source="main", at_seq=4)
        log.append("x", [ev(20)], expected_head=a[4])
        log.fork("empty", source="main", at_seq=9)
        r = log.verify()
        assert r.ok and r.first is None and r.n_events == 11 and r.n_branches == 3

    def test_snapshots_cache(self, log: EventLog) -> None:
        log.init_branch("main")
        ids = log.append("main", [ev(i) for i in range(6)], expected_head=None)
        assert log.load_snapshot("main", None, "k") is None
        log.save_snapshot("main", 2, "k", b"two")
        log.save_snapshot("main", 4, "k", b"four")
        assert log.load_snapshot("main", None, "k") == ("main", 4, ids[4], b"four")
        assert log.load_snapshot("main", 3, "k") == ("main", 2, ids[2], b"two")
        assert log.load_snapshot("main", 1, "k") is None
        assert log.load_snapshot("main", None, "other") is None
        log.fork("x", source="main", at_seq=3)
        log.append("x", [ev(9)], expected_head=ids[3])
        assert log.load_snapshot("x", None, "k") == ("main", 2, ids[2], b"two")
        assert log.list_snapshots("k") == [("main", 2, ids[2]), ("main", 4, ids[4])]
        # several keys at once, each found on its own segment of the history; a key with none is absent
        log.save_snapshot("x", 0, "d", b"delta-x")
        log.save_snapshot("main", 1, "d", b"delta-main")
        got = log.load_snapshots("x", None, ["k", "d", "none"])
        assert got == {"k": ("main", 2, ids[2], b"two"), "d": ("x", 0, log.at("x", 0).id, b"delta-x")}
        assert log.load_snapshots("main", 1, ["k", "d"]) == {"d": ("main", 1, ids[1], b"delta-main")}
        log.save_snapshot("main", 5, "k", b"five")  # a later save is seen by the next lookup
        assert log.load_snapshots("main", None, ["k"]) == {"k": ("main", 5, ids[5], b"five")}
        assert log.clear_snapshots() == 5
        assert log.load_snapshot("main", None, "k") is None and log.load_snapshots("x", None, ["k", "d"]) == {}


class TestMemoryLog(LogContract):
    def make_log(self, tmp_path: Path) -> EventLog:
        return MemoryEventLog(clock=FakeClock())


class TestDuckFileLog(LogContract):
    def make_log(self, tmp_path: Path) -> EventLog:
        return DuckEventLog(tmp_path / "log.duckdb", clock=FakeClock())

    def test_survives_reopen(self, tmp_path: Path) -> None:
        p = tmp_path / "log.duckdb"
        with DuckEventLog(p) as log:
            log.init_branch("main")
            ids = log.append("main", [ev(0), ev(1)], expected_head=None)
        with DuckEventLog(p, create=False) as log:
            assert [e.id for e in log.read("main")] == ids
            assert log.verify().ok


class TestDuckMemoryLog(LogContract):
    def make_log(self, tmp_path: Path) -> EventLog:
        return DuckEventLog(":memory:", clock=FakeClock())
