"""Issue 24, Deliver 1: what an open log answers from memory (refs, the latest events, the
snapshot index), a fork's ref made durable through the journal, and that memory and DuckDB agree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from store import BranchExists, BranchNotFound, DuckEventLog, JournalDamaged, NewEvent

ROOT = Path(__file__).resolve().parents[2]


def ev(i: int, kind: str = "k") -> NewEvent:
    return NewEvent(kind, 1, f'{{"i":{i}}}'.encode())


class NoQueries:
    """Makes the log's query paths fail: what still works was answered from memory."""

    def __init__(self, log: DuckEventLog, monkeypatch: pytest.MonkeyPatch) -> None:
        def refuse(*a: object, **kw: object) -> object:
            raise AssertionError("a DuckDB query was made")

        monkeypatch.setattr(log, "_query", refuse)
        monkeypatch.setattr(log, "_one", refuse)
        monkeypatch.setattr(log._writer, "flush", refuse)
        monkeypatch.setattr(log._snapshots, "_con", None)


def _grow(log: DuckEventLog) -> list[str]:
    log.init_branch("main")
    ids: list[str] = []
    for i in range(30):
        ids += log.append("main", [ev(i), ev(i, "other")], expected_head=ids[-1] if ids else None)
    return ids


def test_recent_reads_refs_and_forks_need_no_query(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = DuckEventLog(tmp_path / "log.duckdb")
    ids = _grow(log)
    log.save_snapshot("main", 39, "k", b"state at 39" * 100, event_id=ids[39])
    with monkeypatch.context() as m:
        NoQueries(log, m)
        assert [e.id for e in log.read("main", after_seq=49)] == ids[50:]
        assert [e.seq for e in log.read("main", after_seq=39, until_seq=45, kinds=["other"])] == [41, 43, 45]
        assert log.read("main", after_seq=20, until_seq=20) == []
        assert log.at("main", 17).id == ids[17] and log.at("main", 17).parent == ids[16]
        assert log.branch("main").head_id == ids[-1] and [b.name for b in log.branches()] == ["main"]
        found = log.load_snapshot("main", 50, "k")
        assert found is not None and found[:3] == ("main", 39, ids[39]) and found[3] == b"state at 39" * 100
        f = log.fork("f", source="main", at_seq=30)  # a ref through the journal; its base id from memory
        assert f.base_id == ids[30]
        more = log.append("f", [ev(100)], expected_head=ids[30])
        assert [e.id for e in log.read("f")] == [*ids[:31], *more]
        with pytest.raises(BranchExists):
            log.fork("f", source="main", at_seq=3)
        with pytest.raises(BranchNotFound):
            log.branch("nope")
    held = log.read("f")
    log.close()
    with DuckEventLog(tmp_path / "log.duckdb") as log:  # memory and DuckDB agree, field by field
        assert log.read("f") == held and log.verify().ok
        assert log.branch("f").base_id == ids[30]


def test_a_read_of_old_events_still_queries_and_agrees(tmp_path: Path) -> None:
    with DuckEventLog(tmp_path / "log.duckdb") as log:
        log.init_branch("main")
        ids = log.append("main", [ev(i) for i in range(5000)], expected_head=None)  # more than the tail holds
        ids += log.append("main", [ev(9)], expected_head=ids[-1])
        assert [e.id for e in log.read("main", after_seq=10, until_seq=20)] == ids[11:21]
        assert log.at("main", 3).id == ids[3] and log.at("main", 5000).id == ids[5000]


# a writer that has flushed three events (the scripts below go on, then die)
GROWN = """
import os, sys
sys.path.insert(0, {root!r})
from store import DuckEventLog, NewEvent
log = DuckEventLog(sys.argv[1])
log.init_branch("main")
ids = log.append("main", [NewEvent("k", 1, b'{{"i":1}}')] * 3, expected_head=None)
log.flush()
"""

FORK_AND_DIE = GROWN + """log.fork("f", source="main", at_seq=1)
log.append("f", [NewEvent("k", 1, b'{{"i":2}}')], expected_head=ids[1])
log.fork("g", source="f", at_seq=0)
print(ids[1])
os._exit(0)  # killed: the forks and their events are only in the journal
"""


def test_a_fork_journalled_when_the_writer_died_is_recovered(tmp_path: Path) -> None:
    p = tmp_path / "log.duckdb"
    out = subprocess.run([sys.executable, "-c", FORK_AND_DIE.format(root=str(ROOT)), str(p)], check=True, capture_output=True, text=True)
    base = out.stdout.strip()
    lines = (tmp_path / "log.duckdb.journal").read_bytes().splitlines()
    assert len(lines) == 3 and b'"ref":{' in lines[0]  # the refs have lines of their own
    with DuckEventLog(p) as log:
        assert [b.name for b in log.branches()] == ["main", "f", "g"]
        assert log.branch("f").base_id == base and log.branch("f").head_seq == 0
        assert log.branch("g").base_branch == "f" and log.verify().ok
    assert os.path.getsize(tmp_path / "log.duckdb.journal") == 0


def test_a_journalled_ref_altered_with_its_sum_recomputed_is_damage(tmp_path: Path) -> None:
    import hashlib

    p = tmp_path / "log.duckdb"
    subprocess.run([sys.executable, "-c", FORK_AND_DIE.format(root=str(ROOT)), str(p)], check=True, capture_output=True)
    j = tmp_path / "log.duckdb.journal"
    lines = j.read_bytes().splitlines()
    body = lines[0][: -(len(b',"sum":"') + 64 + 2)].replace(b'"head_seq":-1', b'"head_seq":5')
    lines[0] = body + b',"sum":"' + hashlib.sha256(body).hexdigest().encode() + b'"}'
    j.write_bytes(b"\n".join(lines) + b"\n")
    before = j.read_bytes()
    with pytest.raises(JournalDamaged, match="journal line 1: it is not a new ref"):
        DuckEventLog(p)
    assert j.read_bytes() == before


def test_refs_a_full_disk_left_committed_are_held_and_the_order_is_duckdbs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The heads file could not be written after DuckDB committed a new ref: the ref is there
    (StoreFull says it was recorded), and the open log knows it; a root made after a journalled
    fork comes after it in the open log, in SQL and after reopening."""
    import errno
    from datetime import UTC, datetime

    from store import BranchImport, BranchInfo, StoreFull
    from store.duck.heads import HeadsFile

    p = tmp_path / "log.duckdb"
    log = DuckEventLog(p)

    def full(self: object, committed: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(HeadsFile, "write", full)
        with pytest.raises(StoreFull) as e:
            log.init_branch("a")
        assert e.value.recorded
        with pytest.raises(StoreFull):
            log.import_branches([BranchImport("b", None, (ev(0),), BranchInfo("b", None, None, None, -1, None, datetime.now(UTC)))])
    assert [b.name for b in log.branches()] == ["a", "b"]
    with pytest.raises(BranchExists):
        log.init_branch("a")
    [h] = log.append("a", [ev(1)], expected_head=None)
    log.fork("f", source="a", at_seq=0)
    log.init_branch("r")
    assert [b.name for b in log.branches()] == ["a", "b", "f", "r"]
    assert [r[0] for r in log.sql("SELECT name FROM branches ORDER BY ord").rows] == ["a", "b", "f", "r"]
    log.close()
    with DuckEventLog(p) as log:
        assert [b.name for b in log.branches()] == ["a", "b", "f", "r"] and log.verify().ok


@pytest.mark.parametrize("forge", ["own base", "bad name", "negative seq", "base not the event"])
def test_a_forged_ref_line_is_refused_on_open(tmp_path: Path, forge: str) -> None:
    """Journalled refs rewritten with their sums recomputed: a fork on itself (every read would
    loop), a name no branch may have, a negative seq, a base id that is not the event at its seq."""
    import hashlib

    from store import StoreError

    p = tmp_path / "log.duckdb"
    subprocess.run([sys.executable, "-c", FORK_AND_DIE.format(root=str(ROOT)), str(p)], check=True, capture_output=True)
    j = tmp_path / "log.duckdb.journal"
    lines = j.read_bytes().splitlines()
    body = lines[0][: -(len(b',"sum":"') + 64 + 2)]
    body = {"own base": body.replace(b'"base_branch":"main"', b'"base_branch":"f"'),
            "bad name": body.replace(b'"name":"f"', b'"name":"../x"').replace(b'"branch":"f"', b'"branch":"../x"'),
            "negative seq": body.replace(b'"base_seq":1', b'"base_seq":-3'),
            "base not the event": body.replace(b'"base_seq":1', b'"base_seq":0')}[forge]
    lines[0] = body + b',"sum":"' + hashlib.sha256(body).hexdigest().encode() + b'"}'
    j.write_bytes(b"\n".join(lines) + b"\n")
    before = j.read_bytes()
    with pytest.raises((JournalDamaged, StoreError)):
        DuckEventLog(p)
    assert j.read_bytes() == before


def test_a_fork_at_a_cached_depth_needs_no_query(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events long out of the held tail: a fork where a snapshot is cached takes its base id from
    the snapshot's row (the id the state rebuilt from it is trusted at), without a query."""
    with DuckEventLog(tmp_path / "log.duckdb") as log:
        log.init_branch("main")
        ids = log.append("main", [ev(i) for i in range(6000)], expected_head=None)  # more than the tail holds
        log.save_snapshot("main", 100, "k", b"s" * 600, event_id=ids[100])
        with monkeypatch.context() as m:
            NoQueries(log, m)
            assert log.fork("f", source="main", at_seq=100).base_id == ids[100]
        assert log.verify().ok and log.branch("f").base_id == log.at("main", 100).id


SNAPSHOT_AND_DIE = GROWN + """log.save_snapshot("main", 2, "k", b"kept" * 200, event_id=ids[2])
log.flush()
log.save_snapshot("main", 1, "k", b"lost" * 200, event_id=ids[1])  # held for the next flush
print(log.load_snapshot("main", 1, "k")[3][:4].decode())
os._exit(0)
"""


def test_a_snapshot_row_waits_for_the_next_flush_and_a_crash_loses_only_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saving a snapshot makes no DuckDB transaction of its own (2-3 ms each): the row is held,
    found by the next lookup, and committed with the next flush; a writer killed before that
    loses the cache entry, never an event."""
    p = tmp_path / "log.duckdb"
    with DuckEventLog(p) as log:
        log.init_branch("main")
        ids = log.append("main", [ev(i) for i in range(3)], expected_head=None)
        log.flush()
        assert log.load_snapshot("main", 2, "k") is None  # the index of (main, k) read once
        with monkeypatch.context() as m:
            NoQueries(log, m)
            m.setattr(log._writer, "_commit", lambda *a, **kw: (_ for _ in ()).throw(AssertionError("a transaction")))
            log.save_snapshot("main", 2, "k", b"s" * 600, event_id=ids[2])
            log.save_snapshot("main", 2, "k", b"t" * 600, event_id=ids[2])  # saved twice: the latest counts
            found = log.load_snapshot("main", 2, "k")
            assert found is not None and found[3] == b"t" * 600
        assert log.list_snapshots("k") == [("main", 2, ids[2])]  # a query flushes the row in
        log.save_snapshot("main", 2, "k", b"u" * 600, event_id=ids[2])  # over a committed row: replaced at the flush
        log.save_snapshot("main", 1, "k", b"v" * 600, event_id=ids[1])  # a new place: a plain insert
        log.flush()
        assert log.list_snapshots("k") == [("main", 1, ids[1]), ("main", 2, ids[2])]
        found = log.load_snapshot("main", 2, "k")
        assert found is not None and found[3] == b"u" * 600
    with DuckEventLog(p) as log:
        found = log.load_snapshot("main", 2, "k")
        assert found is not None and found[3] == b"u" * 600 and log.verify().ok
    q = tmp_path / "died.duckdb"
    out = subprocess.run([sys.executable, "-c", SNAPSHOT_AND_DIE.format(root=str(ROOT)), str(q)], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "lost"
    with DuckEventLog(q) as log:
        assert log.list_snapshots("k") == [("main", 2, log.at("main", 2).id)] and log.verify().ok
        assert log.load_snapshot("main", 1, "k") is None


@pytest.mark.parametrize("bad", ["seq 1.5", "seq -1", "seq past the head", "seq True", "key not text", "key with NUL", "wrong event"])
def test_a_snapshot_that_a_flush_could_not_insert_is_refused_when_saved(tmp_path: Path, bad: str) -> None:
    """A held row DuckDB refused (or rounded onto another row's place) would fail every later
    flush; a row naming another event would give a fork the wrong base. Each is StoreError at
    save_snapshot, nothing is held, and the log goes on."""
    from store import StoreError

    log = DuckEventLog(tmp_path / "log.duckdb")
    ids = _grow(log)
    log.flush()
    log.save_snapshot("main", 2, "k", b"kept", event_id=ids[2])
    args: dict[str, object] = {"seq 1.5": {"seq": 1.5}, "seq -1": {"seq": -1}, "seq past the head": {"seq": 60},
                               "seq True": {"seq": True}, "key not text": {"key": b"k"}, "key with NUL": {"key": "k\x00"},
                               "wrong event": {"event_id": ids[3]}}[bad]  # type: ignore[assignment]
    call = {"seq": 2, "key": "k", "event_id": ids[2], **args}  # type: ignore[dict-item]
    with pytest.raises(StoreError):
        log.save_snapshot("main", call["seq"], call["key"], b"bad", event_id=call["event_id"])  # type: ignore[arg-type]
    more = log.append("main", [ev(i) for i in range(3)], expected_head=ids[-1])
    log.flush()
    assert log.list_snapshots("k") == [("main", 2, ids[2])] and log.verify().ok
    log.close()
    with DuckEventLog(tmp_path / "log.duckdb") as log:
        assert log.branch("main").head_id == more[-1] and log.fork("f", source="main", at_seq=2).base_id == ids[2]


def test_a_full_disk_after_the_commit_leaves_nothing_to_insert_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB committed the journalled batches (and held snapshot rows), then the heads file could
    not be written: StoreFull says it was recorded, and the next flush does not insert them again."""
    import errno

    from store import StoreFull
    from store.duck.heads import HeadsFile

    log = DuckEventLog(tmp_path / "log.duckdb")
    ids = _grow(log)
    log.save_snapshot("main", 4, "k", b"s" * 600, event_id=ids[4])

    def full(self: object, committed: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(HeadsFile, "write", full)
        with pytest.raises(StoreFull) as e:
            log.flush()
        assert e.value.recorded
    more = log.append("main", [ev(99)], expected_head=ids[-1])
    log.flush()
    assert log.verify().ok and log.list_snapshots("k") == [("main", 4, ids[4])]
    log.close()
    with DuckEventLog(tmp_path / "log.duckdb") as log:
        assert log.branch("main").head_id == more[-1] and log.count() == len(ids) + 1
