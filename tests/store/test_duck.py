"""DuckDB-specific behaviour: locks, read-only SQL, store layout, format checks, crash safety."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from store import (
    DuckEventLog,
    JournalDamaged,
    NewEvent,
    Store,
    StoreError,
    StoreLocked,
    StoreNotFound,
)

ROOT = Path(__file__).resolve().parents[2]


def _child(code: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE, text=True)


def test_second_process_gets_a_clear_lock_error(tmp_path: Path) -> None:
    Store.create(tmp_path / "s").close()
    child = _child(
        f"""
        import sys, time
        from store import Store
        s = Store.open({str(tmp_path / 's')!r})
        print("open", flush=True)
        time.sleep(30)
        """
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "open"
        for read_only in (False, True):
            with pytest.raises(StoreLocked) as exc:
                Store.open(tmp_path / "s", read_only=read_only)
            msg = str(exc.value)
            assert msg.startswith(f"store {tmp_path / 's' / 'log.duckdb'} is locked by another process (")
            assert f"PID {child.pid})" in msg
            assert "one process open a store at a time" in msg
    finally:
        child.kill()
        child.wait()
    Store.open(tmp_path / "s").close()  # the lock goes with the process


def test_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFound) as exc:
        Store.open(tmp_path / "nope")
    assert str(exc.value) == f"no store at {tmp_path / 'nope'}: create one with `sia init --store {tmp_path / 'nope'}`"
    with pytest.raises(StoreNotFound):
        DuckEventLog(tmp_path / "x.duckdb", read_only=True)
    assert not (tmp_path / "x.duckdb").exists()


def test_foreign_duckdb_file_is_not_a_store(tmp_path: Path) -> None:
    p = tmp_path / "other.duckdb"
    duckdb.connect(str(p)).close()
    with pytest.raises(StoreNotFound):
        DuckEventLog(p, create=False)


def test_format_version_is_checked(tmp_path: Path) -> None:
    p = tmp_path / "log.duckdb"
    DuckEventLog(p).close()
    con = duckdb.connect(str(p))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    con.close()
    with pytest.raises(StoreError, match="has log format '99', this engine reads format '1'"):
        DuckEventLog(p)


def test_read_only_store_refuses_writes(tmp_path: Path) -> None:
    Store.create(tmp_path).close()
    with Store.open(tmp_path, read_only=True) as s:
        with pytest.raises(StoreError, match="is open read-only; open it without read_only to write"):
            s.log.init_branch("main")


CRASH_CHILD = """
import sys
from store import DuckEventLog, NewEvent
log = DuckEventLog(sys.argv[1])
if "main" not in [b.name for b in log.branches()]:
    log.init_branch("main")
head = log.branch("main").head_id
batch = 0
while True:
    n = log.count()
    events = [NewEvent("tick", 1, ('{"batch":%d,"n":%d,"pad":"%s"}' % (n, i, "x" * 200)).encode()) for i in range(BATCH)]
    head = log.append("main", events, expected_head=head)[-1]
    batch += 1
    if batch == 1:
        print("go", flush=True)
"""


def test_sigkill_during_batch_appends_is_all_or_nothing(tmp_path: Path) -> None:
    """Kill a writer at 24 random points; every reopened log verifies and holds whole batches."""
    p = tmp_path / "log.duckdb"
    rng = random.Random(1234)
    batch = 500
    script = CRASH_CHILD.replace("BATCH", str(batch))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    counts = []
    for _ in range(24):
        child = subprocess.Popen([sys.executable, "-c", script, str(p)], env=env, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "go"
        time.sleep(rng.uniform(0.0, 0.15))
        child.send_signal(signal.SIGKILL)
        child.wait()
        with DuckEventLog(p, create=False) as log:
            report = log.verify()
            assert report.ok, report.first
            n = log.count()
            assert n % batch == 0, f"a batch was cut: {n} events"
            rows = log.sql("SELECT payload->>'batch' AS b, count(*) FROM events GROUP BY b HAVING count(*) != ?", [batch])[1]
            assert rows == []
        counts.append(n)
    assert counts == sorted(counts) and counts[-1] > counts[0]


def test_one_writer_per_store_in_a_process(tmp_path: Path) -> None:
    """The write cache and the journal belong to one DuckEventLog: a second writer on the same
    file in the same process is refused (a read-only one is fine once the writer is closed)."""
    p = tmp_path / "log.duckdb"
    a = DuckEventLog(p)
    with pytest.raises(StoreLocked) as exc:
        DuckEventLog(p)
    assert str(exc.value) == (
        f"store {p} is already open for writing in this process (PID {os.getpid()}); "
        "use that log, or close it before opening the store again"
    )
    a.close()
    DuckEventLog(p).close()


JOURNAL_CHILD = """
import sys
from store import DuckEventLog, NewEvent
log = DuckEventLog(sys.argv[1])
if "main" not in [b.name for b in log.branches()]:
    log.init_branch("main")
head = log.branch("main").head_id
k = log.count()
print("go", flush=True)
while True:
    events = [NewEvent("tick", 1, ('{"batch":%d,"i":%d}' % (k, i)).encode()) for i in range(3)]
    head = log.append("main", events, expected_head=head)[-1]
    print(k, flush=True)  # acknowledged: append returned
    k += 3
"""


def test_sigkill_during_small_appends_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    """Small batches go through the journal: every batch whose append returned survives a
    SIGKILL, none is cut, and the reopened log verifies."""
    p = tmp_path / "log.duckdb"
    rng = random.Random(99)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(12):
        child = subprocess.Popen([sys.executable, "-c", JOURNAL_CHILD, str(p)], env=env, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "go"
        time.sleep(rng.uniform(0.05, 0.4))
        child.send_signal(signal.SIGKILL)
        child.wait()
        acked = [int(x) for x in child.stdout.read().split()]
        with DuckEventLog(p, create=False) as log:
            assert log.verify().ok
            n = log.count()
            assert n % 3 == 0
            if acked:
                assert n >= acked[-1] + 3, f"acknowledged batch {acked[-1]} lost ({n} events)"
        assert (p.parent / "log.duckdb.journal").stat().st_size == 0  # recovered and emptied


def _journalled(tmp_path: Path) -> tuple[Path, list[str]]:
    """A store whose writer died with journalled batches (simulated by not closing it)."""
    p = tmp_path / "log.duckdb"
    log = DuckEventLog(p)
    log.init_branch("main")
    ids = []
    for i in range(4):
        ids += log.append("main", [NewEvent("k", 1, f'{{"i":{i}}}'.encode())], expected_head=ids[-1] if ids else None)
    assert log._writer.pending  # still only in the journal
    log._con.close()  # the process "dies": no flush, no journal clear
    if log._writer.journal is not None:
        log._writer.journal.close()
    from store.duck import OPEN_WRITERS

    OPEN_WRITERS.clear()
    return p, ids


def test_journal_is_replayed_on_open(tmp_path: Path) -> None:
    p, ids = _journalled(tmp_path)
    with DuckEventLog(p, create=False) as log:
        assert [e.id for e in log.read("main")] == ids and log.verify().ok


def test_read_only_store_open_sees_the_journal_and_writes_nothing(tmp_path: Path) -> None:
    import hashlib

    p, ids = _journalled(tmp_path)
    with pytest.raises(StoreError, match="has journalled events not yet in the log"):
        DuckEventLog(p, read_only=True)

    def files() -> dict[str, str]:
        return {str(f.relative_to(tmp_path)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(tmp_path.rglob("*")) if f.is_file()}

    before = files()
    with Store.open(tmp_path, read_only=True) as s:
        assert [e.id for e in s.log.read("main")] == ids and s.journal_events == len(ids)
    assert files() == before  # the journal is still there, log.duckdb untouched
    with Store.open(tmp_path) as s:  # a read-write open moves the journal in
        assert [e.id for e in s.log.read("main")] == ids and s.journal_events == 0
    assert (tmp_path / "log.duckdb.journal").stat().st_size == 0


def test_torn_last_line_is_dropped_and_damage_is_refused(tmp_path: Path) -> None:
    p, ids = _journalled(tmp_path)
    j = p.parent / "log.duckdb.journal"
    lines = j.read_bytes().split(b"\n")
    j.write_bytes(b"\n".join(lines[:3]) + b"\n" + lines[3][:20])  # the 4th batch was torn mid-write
    with DuckEventLog(p, create=False) as log:
        assert [e.id for e in log.read("main")] == ids[:3]
    (tmp_path / "b").mkdir()
    p2, _ = _journalled(tmp_path / "b")
    j2 = p2.parent / "log.duckdb.journal"
    lines = j2.read_bytes().split(b"\n")
    lines[1] = b'{"garbage'
    j2.write_bytes(b"\n".join(lines))
    for _ in range(2):  # a refused open leaves nothing behind: the same error again, not a lock
        with pytest.raises(JournalDamaged, match="journal line 2: it is not a batch"):
            DuckEventLog(p2, create=False)


def _outcome(p: Path) -> tuple[str, object]:
    """Open after a crash: ('ok', ids of main) or ('damaged', line) with the files untouched."""
    j = p.parent / "log.duckdb.journal"
    before = {f.name: f.read_bytes() for f in p.parent.iterdir() if f.is_file()}
    try:
        with DuckEventLog(p, create=False) as log:
            return "ok", [e.id for e in log.read("main")]
    except JournalDamaged as e:
        after = {f.name: f.read_bytes() for f in p.parent.iterdir() if f.is_file()}
        assert after[j.name] == before[j.name], "a refused journal must be left as it was"
        with duckdb.connect(str(p), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM events").fetchone() == (0,), "nothing may reach DuckDB"
        return "damaged", e.line


def test_every_cut_of_the_last_line(tmp_path: Path) -> None:
    """The torn-write rule at every byte: a strict prefix of the last batch is dropped (never
    acknowledged), the whole batch without its newline is kept, and nothing else is lost."""
    (tmp_path / "orig").mkdir()
    _, ids = _journalled(tmp_path / "orig")
    saved = (tmp_path / "orig" / "log.duckdb.journal").read_bytes()
    db = (tmp_path / "orig" / "log.duckdb").read_bytes()
    assert not (tmp_path / "orig" / "log.duckdb.wal").exists()
    last = saved.rstrip(b"\n").rsplit(b"\n", 1)[1]
    head = saved[: len(saved) - len(last) - 1]
    for k in range(len(last) + 1):
        d = tmp_path / f"cut{k}"
        d.mkdir()
        (d / "log.duckdb").write_bytes(db)
        (d / "log.duckdb.journal").write_bytes(head + last[:k])
        kind, got = _outcome(d / "log.duckdb")
        assert kind == "ok", (k, got)
        assert got == (ids if k == len(last) else ids[:3]), k


def test_every_flipped_byte_of_the_last_line_is_refused(tmp_path: Path) -> None:
    """An acknowledged (newline-terminated) batch is never dropped or taken altered: a flipped
    byte anywhere in it, its newline included, is ``JournalDamaged`` and the journal stays."""
    (tmp_path / "orig").mkdir()
    _journalled(tmp_path / "orig")
    saved = (tmp_path / "orig" / "log.duckdb.journal").read_bytes()
    db = (tmp_path / "orig" / "log.duckdb").read_bytes()
    assert not (tmp_path / "orig" / "log.duckdb.wal").exists()
    start = saved.rstrip(b"\n").rfind(b"\n") + 1
    for pos in range(start, len(saved)):
        for bit in ((0x01, 0x20)[pos % 2],):  # the low bit or the case bit, alternately
            d = tmp_path / f"flip{pos}-{bit}"
            d.mkdir()
            (d / "log.duckdb").write_bytes(db)
            data = bytearray(saved)
            data[pos] ^= bit
            (d / "log.duckdb.journal").write_bytes(bytes(data))
            kind, got = _outcome(d / "log.duckdb")
            assert (kind, got) == ("damaged", 4), (pos, bit, kind, got)


def test_an_altered_but_well_formed_line_never_reaches_duckdb(tmp_path: Path) -> None:
    """D5: a journal line whose payload was changed (valid JSON, old sum and ids) is refused
    before anything is moved in; so is one with invalid UTF-8 (D2)."""
    import msgspec as _m

    for case in ("payload", "resummed", "utf8"):
        d = tmp_path / case
        d.mkdir()
        p, _ = _journalled(d)
        j = d / "log.duckdb.journal"
        lines = j.read_bytes().split(b"\n")
        if case == "utf8":
            lines[1] = lines[1].replace(b'"k"', b'"\xff"', 1)
        else:
            b = _m.json.decode(lines[1])
            b["payloads"][0] = '{"i":99}'
            lines[1] = _m.json.encode(b)
            if case == "resummed":  # a forger who recomputes the line's sum: the ids still disagree
                import hashlib
                body = lines[1][: -len(b',"sum":"') - 66]
                lines[1] = body + b',"sum":"' + hashlib.sha256(body).hexdigest().encode() + b'"}'
        j.write_bytes(b"\n".join(lines))
        kind, line = _outcome(p)
        assert (kind, line) == ("damaged", 2), case


def test_batches_already_committed_are_skipped_on_replay(tmp_path: Path) -> None:
    """A crash between the DuckDB commit and the journal clear leaves committed batches in the
    journal; replay recognises them by id."""
    p, ids = _journalled(tmp_path)
    j = p.parent / "log.duckdb.journal"
    saved = j.read_bytes()
    with DuckEventLog(p, create=False) as log:
        assert log.count() == 4
    j.write_bytes(saved)
    with DuckEventLog(p, create=False) as log:
        assert [e.id for e in log.read("main")] == ids and log.verify().ok
