"""Issue 24, Deliver 3: group commit. Threads appending on one log share journal fsyncs; each
returns only once its own batch is durable; a failed fsync takes every batch it left
unacknowledged with it, and the log goes on."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path

import pytest

from store import DuckEventLog, NewEvent, StoreFull


def ev(t: int, i: int) -> NewEvent:
    return NewEvent("k", 1, json.dumps({"t": t, "i": i}).encode())


def test_concurrent_appends_share_fsyncs_and_each_returns_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = DuckEventLog(tmp_path / "log.duckdb", flush_every=10_000)
    journal = log._writer.journal
    assert journal is not None
    real = os.fsync
    calls = []

    def slow_fsync(fd: int) -> None:  # a slow disk: lines pile up while one fsync runs
        time.sleep(0.003)
        real(fd)
        calls.append(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    for t in range(4):
        log.init_branch(f"w{t}")
    calls.clear()
    not_durable = []
    mine = threading.local()
    write = journal.write

    def write_noting_ticket(batch):  # type: ignore[no-untyped-def]
        mine.ticket = write(batch)
        return mine.ticket

    monkeypatch.setattr(journal, "write", write_noting_ticket)

    def writer(t: int) -> None:
        head = None
        for i in range(40):
            [head] = log.append(f"w{t}", [ev(t, i)], expected_head=head)
            if journal._synced < mine.ticket:  # returned before its line was durable
                not_durable.append((t, i))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not not_durable
    assert len(calls) < 160 * 0.75, len(calls)  # 160 appends, far fewer fsyncs (one writer alone pays one each)
    monkeypatch.setattr(os, "fsync", real)
    for t in range(4):
        assert [json.loads(e.payload)["i"] for e in log.read(f"w{t}")] == list(range(40))
    assert log.verify().ok
    log.close()


def test_a_failed_fsync_drops_every_batch_it_left_unacknowledged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two lines written, then the fsync that would cover both fails (a full disk found late):
    both callers get StoreFull, neither batch is in the log (now or after reopening), and the
    next append goes on from the heads before them."""
    p = tmp_path / "log.duckdb"
    log = DuckEventLog(p)
    log.init_branch("a")
    log.init_branch("b")
    [ha] = log.append("a", [ev(0, 0)], expected_head=None)
    [hb] = log.append("b", [ev(1, 0)], expected_head=None)
    size = os.path.getsize(str(p) + ".journal")
    # two appends write their lines, as threads would, before either syncs
    ids_a, ticket_a = log._writer.append("a", [ev(0, 1)], expected_head=ha)
    ids_b, ticket_b = log._writer.append("b", [ev(1, 1)], expected_head=hb)
    assert ticket_a is not None and ticket_b is not None
    real = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    journal = log._writer.journal
    assert journal is not None
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        journal.sync(ticket_a)
    monkeypatch.setattr(os, "fsync", real)
    with log._lock:
        log._writer.drop_unsynced()
    with pytest.raises(OSError):  # the other line went with it: its caller is told so too
        journal.sync(ticket_b)
    assert os.path.getsize(str(p) + ".journal") == size
    assert log.branch("a").head_id == ha and log.branch("b").head_id == hb
    assert [e.id for e in log.read("a")] == [ha]
    [ha2] = log.append("a", [ev(0, 2)], expected_head=ha)
    log.close()
    with DuckEventLog(p) as log:
        assert [e.id for e in log.read("a")] == [ha, ha2] and [e.id for e in log.read("b")] == [hb]
        assert log.verify().ok


def test_a_failed_fsync_through_append_is_store_full_and_nothing_stays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "log.duckdb"
    log = DuckEventLog(p)
    log.init_branch("a")
    [h] = log.append("a", [ev(0, 0)], expected_head=None)
    real = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StoreFull):
        log.append("a", [ev(0, 1)], expected_head=h)
    monkeypatch.setattr(os, "fsync", real)
    assert log.branch("a").head_id == h and len(log.read("a")) == 1
    log.fork("f", source="a", at_seq=0)  # a ref line after the failure: the log goes on
    log.close()
    with DuckEventLog(p) as log:
        assert len(log.read("a")) == 1 and [b.name for b in log.branches()] == ["a", "f"] and log.verify().ok


# -- a hostile review's findings (issue 24), each reproduced here ------------------------------------
def _write(log: DuckEventLog, branch: str, i: int, head: str | None) -> tuple[list[str], int]:
    """``append`` up to where it lets go of the lock: the line written, not yet synced."""
    with log._lock:
        ids, ticket = log._writer.append(branch, [ev(0, i)], expected_head=head)
    assert ticket is not None
    return ids, ticket


def _sync_as_append_does(log: DuckEventLog, ids: list[str], ticket: int) -> list[str]:
    """``append`` after it let go of the lock (its own code path, called through a real append below)."""
    journal = log._writer.journal
    assert journal is not None
    try:
        journal.sync(ticket)
    except OSError:
        with log._lock:
            log._writer.drop_unsynced()
            if journal.lost(ticket):
                raise
    return ids


def _failing(fd: int) -> None:
    raise OSError(errno.EIO, "Input/output error")


def _fsync_fails(log: DuckEventLog, ticket: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fsync that would make line ``ticket`` durable fails (an I/O error)."""
    journal = log._writer.journal
    assert journal is not None
    monkeypatch.setattr(os, "fsync", _failing)
    with pytest.raises(OSError):
        journal.sync(ticket)
    monkeypatch.undo()


def test_a_line_made_durable_before_another_fsync_failed_is_acknowledged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = DuckEventLog(tmp_path / "log.duckdb", flush_every=10_000)
    for b in "abc":
        log.init_branch(b)
    t1 = _write(log, "a", 1, None)
    t2 = _write(log, "b", 2, None)
    _sync_as_append_does(log, *t2)  # its fsync covers line 1 too
    t3 = _write(log, "c", 3, None)
    _fsync_fails(log, t3[1], monkeypatch)
    assert _sync_as_append_does(log, *t1) == t1[0]  # durable: not told it failed
    with pytest.raises(OSError):
        _sync_as_append_does(log, *t3)
    log.close()
    with DuckEventLog(tmp_path / "log.duckdb") as log:
        assert [e.id for e in log.read("a")] == t1[0] and log.read("c") == []


def test_a_batch_a_flush_committed_while_its_fsync_failed_is_acknowledged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = DuckEventLog(tmp_path / "log.duckdb", flush_every=10_000)
    log.init_branch("a")
    real = os.fsync
    entered, go = threading.Event(), threading.Event()

    def fsync(fd: int) -> None:
        if threading.current_thread().name == "T1":
            entered.set()
            go.wait()
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out: dict[str, object] = {}

    def t1() -> None:
        try:
            out["ids"] = log.append("a", [ev(0, 1)], expected_head=None)
        except Exception as e:  # what it was told
            out["error"] = e

    th1 = threading.Thread(target=t1, name="T1")
    th1.start()
    entered.wait()
    th2 = threading.Thread(target=log.flush, name="T2")  # commits T1's batch into DuckDB meanwhile
    th2.start()
    time.sleep(0.3)
    go.set()
    th1.join()
    th2.join()
    monkeypatch.undo()
    assert "error" not in out and [e.id for e in log.read("a")] == out["ids"]
    log.close()
    with DuckEventLog(tmp_path / "log.duckdb") as log:
        assert [e.id for e in log.read("a")] == out["ids"]


def test_nothing_built_on_a_dropped_batch_survives_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot saved on a batch whose fsync then failed, and a fork asked for at it: the
    snapshot is forgotten with the batch, the fork is refused (its base never was)."""
    from store import EventNotFound

    log = DuckEventLog(tmp_path / "log.duckdb", flush_every=10_000)
    log.init_branch("a")
    [h0] = log.append("a", [ev(0, 0)], expected_head=None)
    t1 = _write(log, "a", 1, h0)
    log.save_snapshot("a", 1, "K", b"state after a dropped event")
    _fsync_fails(log, t1[1], monkeypatch)
    with pytest.raises(EventNotFound):
        log.fork("f", source="a", at_seq=1)
    log.flush()
    with pytest.raises(OSError):
        _sync_as_append_does(log, *t1)
    [h1] = log.append("a", [ev(0, 2)], expected_head=h0)  # a#1 is another event now
    assert h1 != t1[0][0] and log.load_snapshot("a", None, "K") is None and log.list_snapshots("K") == []
    log.close()
    with DuckEventLog(tmp_path / "log.duckdb") as log:
        assert log.load_snapshot("a", None, "K") is None and [b.name for b in log.branches()] == ["a"] and log.verify().ok


def test_a_fork_whose_fsync_failed_does_not_come_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fork's ref line was written but its fsync failed: the caller was told, so neither
    the open log nor the store after closing and reopening has the branch (the flush on close
    cuts the line off even when nothing else is held)."""
    p = tmp_path / "log.duckdb"
    log = DuckEventLog(p)
    log.init_branch("main")
    log.append("main", [ev(0, 0)], expected_head=None)
    log.flush()
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", _failing)
        with pytest.raises(OSError):
            log.fork("f", source="main", at_seq=0)
    assert [b.name for b in log.branches()] == ["main"]
    log.close()
    assert os.path.getsize(tmp_path / "log.duckdb.journal") == 0
    with DuckEventLog(p) as log:
        assert [b.name for b in log.branches()] == ["main"] and log.verify().ok
