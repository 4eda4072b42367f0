"""A damaged store is reported as damaged, with a typed error, and never rewritten (issue 9:
D1 damaged DuckDB blocks, D3 a masked error, D4 a damaged WAL, lost committed events)."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from sia_engine.cli.main import main
from store import (
    DuckEventLog,
    InvalidEnvelope,
    NewEvent,
    Store,
    StoreDamaged,
    StoreError,
)

ROOT = Path(__file__).resolve().parents[2]


def files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


KILLED_WRITER = """
import os, sys
sys.path.insert(0, {root!r})
from store import DuckEventLog, NewEvent
log = DuckEventLog(sys.argv[1])
if {init}:
    log.init_branch("main")
head = log.branch("main").head_id
log.append("main", [NewEvent("k", 1, ('{{"i":%d}}' % i).encode()) for i in range(300)], expected_head=head)  # straight into DuckDB
os._exit(0)  # no close, no checkpoint: the commit is in log.duckdb.wal only
"""


def killed_writer(path: Path, *, init: bool) -> None:
    subprocess.run([sys.executable, "-c", KILLED_WRITER.format(root=str(ROOT), init=init), str(path)], check=True)
    assert (path.parent / "log.duckdb.wal").stat().st_size > 0


def flip_wal_header(folder: Path) -> dict[str, str]:
    """Flip a bit of the WAL's first byte (DuckDB then skips the whole WAL); the files' hashes after."""
    wal = folder / "log.duckdb.wal"
    data = bytearray(wal.read_bytes())
    data[0] ^= 0x01
    wal.write_bytes(bytes(data))
    return files(folder)


def test_a_wal_duckdb_skips_is_reported_never_a_missing_store_and_never_recreated(tmp_path: Path) -> None:
    """D4: the branch, its ref and 300 events only in the WAL; a flipped header byte makes DuckDB
    skip the WAL without a word. Before: 'no store', and `sia run` wrote a fresh schema."""
    p = tmp_path / "log.duckdb"
    killed_writer(p, init=True)
    before = flip_wal_header(tmp_path)
    for read_only in (True, False):
        with pytest.raises(StoreDamaged) as exc:
            DuckEventLog(p, read_only=read_only)
        assert "did not replay" in str(exc.value) or "lost committed events" in str(exc.value)
    with pytest.raises(StoreDamaged):
        Store.create(tmp_path)  # `sia init` / `sia run` on it: refused, not a new store
    r = CliRunner().invoke(main, ["log", "--store", str(tmp_path)])
    assert r.exit_code == 2 and "is damaged" in r.output, r.output
    assert files(tmp_path) == before  # nothing deleted, truncated or recreated


def test_committed_events_lost_with_a_skipped_wal_are_reported(tmp_path: Path) -> None:
    """A store checkpointed once, then 300 events committed to its WAL; DuckDB skips the WAL
    (header flipped): the tables are there, the events are not. The heads file says they were
    committed, so every open says the store is damaged instead of showing the shorter history."""
    p = tmp_path / "log.duckdb"
    with DuckEventLog(p) as log:
        log.init_branch("main")
        log.append("main", [NewEvent("k", 1, b'{"first":1}')], expected_head=None)
    killed_writer(p, init=False)
    before = flip_wal_header(tmp_path)
    for read_only in (True, False):
        with pytest.raises(StoreDamaged, match=r"lost committed events: main#300 .* was committed, but its head is main#0"):
            DuckEventLog(p, read_only=read_only)
    assert files(tmp_path) == before


JOURNALLED_WRITER = """
import os, sys
sys.path.insert(0, {root!r})
from store import NewEvent, Store
s = Store.create(sys.argv[1])
s.log.init_branch("main")
s.log.append("main", [NewEvent("k", 1, b'{{}}')], expected_head=None)  # journalled: the tables themselves only in the WAL
os._exit(0)
"""


def test_a_store_killed_before_its_first_checkpoint_whose_wal_is_gone_is_damaged_and_untouched(tmp_path: Path) -> None:
    """Issue 19, finding 9: `sia verify` said "no store at <a temporary copy>", and `sia run` said
    damaged but had written a fresh schema into log.duckdb (12 KB to 780 KB)."""
    subprocess.run([sys.executable, "-c", JOURNALLED_WRITER.format(root=str(ROOT)), str(tmp_path)], check=True)
    (tmp_path / "log.duckdb.wal").unlink()
    before = files(tmp_path)
    for argv in (["verify"], ["log"], ["run", "--task", "arith", "--model", "tiny", "--iterations", "1"], ["init"]):
        r = CliRunner().invoke(main, [*argv, "--store", str(tmp_path)])
        assert r.exit_code == 2 and "is damaged" in r.output and "holds no event log" in r.output, (argv, r.output)
        assert "sia-readonly" not in r.output and str(tmp_path) in r.output  # the store named, not a private copy
    assert files(tmp_path) == before


JOURNAL_FORKS = """
import os, sys
sys.path.insert(0, {root!r})
from sia_engine.domain.history import fork
from store import Store
s = Store.open(sys.argv[1])
for i in range(3):
    fork(s.log, f"x{{i}}", source="main", at_seq=3, reason="r")  # journalled, never moved into DuckDB
os._exit(0)
"""


def test_a_journal_cut_short_is_invisible_to_verify_but_not_to_a_signed_checkpoint(tmp_path: Path) -> None:
    """Issue 19, finding 11, as far as the design allows: a journal cut inside its first line
    looks like a torn write (`sia verify` says OK over fewer events); a checkpoint signed while
    the batches were journalled says they were removed."""
    store = tmp_path / "s"
    assert CliRunner().invoke(main, ["demo", "--store", str(store)]).exit_code == 0
    subprocess.run([sys.executable, "-c", JOURNAL_FORKS.format(root=str(ROOT)), str(store)], check=True)
    journal = store / "log.duckdb.journal"
    assert journal.stat().st_size > 200
    key = tmp_path / "k.key"
    assert CliRunner().invoke(main, ["keygen", "--out", str(key)]).exit_code == 0
    r = CliRunner().invoke(main, ["checkpoint", "--sign", str(key), "--out", str(tmp_path / "cp.json"), "--store", str(store)])
    assert r.exit_code == 0, r.output
    journal.write_bytes(journal.read_bytes()[:200])
    r = CliRunner().invoke(main, ["verify", "--store", str(store)])
    assert r.exit_code == 0 and "OK: 54 events" in r.output  # the design cannot tell this from a crash (the last fork was journalled)
    r = CliRunner().invoke(main, ["verify", "--checkpoint", str(tmp_path / "cp.json"), "--public-key", f"{key}.pub", "--store", str(store)])
    # refs are journalled too now: the cut takes the last forks' refs with their events, and the checkpoint names both
    assert r.exit_code == 1 and "55 events were signed, the log holds 54" in r.output, r.output
    assert "branch 'x2' was signed but is not in the log" in r.output, r.output


def test_a_damaged_block_is_a_typed_error_in_every_command(tmp_path: Path) -> None:
    """D1: a flipped byte inside a DuckDB data block: verify, log and sql say the store is
    damaged (exit 2, one line), never a traceback; a read-write open refuses and leaves it."""
    r = CliRunner().invoke(main, ["demo", "--store", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    db = tmp_path / "s" / "log.duckdb"
    con = duckdb.connect(str(db), read_only=True)
    blocks = con.execute("SELECT block_id FROM pragma_storage_info('events') WHERE block_id IS NOT NULL AND block_id >= 0").fetchall()
    block_size = con.execute("SELECT block_size FROM pragma_database_size()").fetchall()[0][0]
    con.close()
    assert blocks
    raw = bytearray(db.read_bytes())
    # block b starts after the 3 header blocks of 4 KiB; its first 8 bytes are its checksum
    start = 3 * 4096 + min(b for (b,) in blocks) * block_size + 8 + 100
    raw[start] ^= 0x10
    db.write_bytes(bytes(raw))
    before = files(tmp_path / "s")
    for args in (["verify"], ["log", "--limit", "0"], ["sql", "SELECT count(*), max(payload::VARCHAR) FROM events"]):
        r = CliRunner().invoke(main, [*args, "--store", str(tmp_path / "s")])
        assert r.exit_code in (1, 2), (args, r.output)
        assert r.exception is None or isinstance(r.exception, SystemExit), (args, r.exception)
        assert "damaged" in r.output or "FAILED" in r.output, (args, r.output)
    assert files(tmp_path / "s") == before


def test_an_error_inside_the_arrow_insert_is_not_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """D3: the typed error of a failed insert reaches the caller (the aborted transaction made
    DuckDB refuse the Arrow view's unregister, and that error used to replace it)."""
    log = DuckEventLog(tmp_path / "log.duckdb", journal=False)
    log.init_branch("main")

    def failing_insert(sql: str, params: list[object]) -> None:
        try:
            log._con.execute("SELECT 'x'::INTEGER")  # aborts the transaction, as DuckDB's own refusal did
        except duckdb.ConversionException as e:
            raise InvalidEnvelope(None, f"a payload is not JSON that DuckDB accepts ({e})") from e

    monkeypatch.setattr(log._writer, "_insert", failing_insert)
    with pytest.raises(InvalidEnvelope):
        log.append("main", [NewEvent("k", 1, b'{"i":1}')] * 40, expected_head=None)
    monkeypatch.undo()
    ids = log.append("main", [NewEvent("k", 1, b'{"i":2}')] * 20, expected_head=None)  # nothing half-written
    assert log.count() == 20 and log.branch("main").head_id == ids[-1]
    log.close()


def test_a_deeply_nested_payload_is_refused_with_a_typed_error(tmp_path: Path) -> None:
    with DuckEventLog(tmp_path / "log.duckdb") as log:
        log.init_branch("main")
        with pytest.raises(InvalidEnvelope, match="nested too deeply"):
            log.append("main", [NewEvent("k", 1, b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}")], expected_head=None)
        assert log.count() == 0


def test_store_error_is_the_root_of_damage(tmp_path: Path) -> None:
    assert issubclass(StoreDamaged, StoreError)


def _fill_until_full(root: Path, per_batch: int) -> int:
    """Append 20 KB events until the disk is full; the batches acknowledged before it."""
    from store import StoreFull

    acknowledged = 0
    s = Store.create(root)
    s.log.init_branch("main")
    head = None
    with pytest.raises(StoreFull, match="disk full: store .* could not record the write") as exc:
        for _ in range(10_000):
            head = s.log.append("main", [NewEvent("k", 1, b'{"x":"' + b"y" * 20_000 + b'"}')] * per_batch, expected_head=head)[-1]
            acknowledged += 1
    assert "cannot rollback" not in str(exc.value)
    with contextlib.suppress(StoreFull):  # closing moves the journal into DuckDB: still no room (it stays in the journal)
        s.close()
    return acknowledged


def test_a_full_disk_is_said_to_be_full_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Issue 19, finding 12: a full disk was `TransactionContext Error: cannot rollback - no
    transaction is active` (DuckDB's commit failed, and the rollback's error hid it)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN) to fill a disk")
    try:
        for per_batch, name in ((1, "journalled"), (300, "direct")):
            root = disk / name
            acknowledged = _fill_until_full(root, per_batch)
            for p in disk.glob("*/blobs"):  # make room to open and read it
                p.rmdir()
            for other in (d for d in disk.iterdir() if d.name != name):
                subprocess.run(["rm", "-rf", str(other)], check=True)
            with Store.open(root, read_only=True) as s:
                assert s.log.count() == acknowledged * per_batch  # every acknowledged batch, nothing of the refused one
            subprocess.run(["rm", "-rf", str(root)], check=True)
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_journal_write_that_fails_leaves_no_part_of_its_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch whose fsync fails (disk full, a quota checked late) was not acknowledged: it must not
    be replayed on the next open, or a rerun of the same command records it twice."""
    import errno as _errno
    import os as _os

    from store import StoreFull

    with Store.create(tmp_path / "s") as s:
        s.log.init_branch("main")
        head = s.log.append("main", [NewEvent("k", 1, b'{"i":0}')], expected_head=None)[-1]
        real = _os.fsync

        def failing(fd: int) -> None:
            raise OSError(_errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(_os, "fsync", failing)
        with pytest.raises(StoreFull):
            s.log.append("main", [NewEvent("k", 1, b'{"i":1}')], expected_head=head)
        monkeypatch.setattr(_os, "fsync", real)
    with Store.open(tmp_path / "s", read_only=True) as s:
        assert s.log.count() == 1


def test_a_full_disk_when_only_the_heads_file_is_left_to_write_says_the_write_was_recorded(tmp_path: Path,
                                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """After DuckDB committed, the heads file (a record that may lag) could not be written: the
    error used to say "nothing of this write was recorded", and the write was in the log."""
    import errno as _errno

    from store import StoreFull
    from store.duck.heads import HeadsFile

    with Store.create(tmp_path / "s") as s:
        s.log.init_branch("main")
        head = s.log.append("main", [NewEvent("k", 1, b'{"i":0}')] * 300, expected_head=None)[-1]  # straight into DuckDB

        def full(self: HeadsFile, committed: object) -> None:
            raise OSError(_errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(HeadsFile, "write", full)
        with pytest.raises(StoreFull, match="recorded the write") as exc:
            s.log.append("main", [NewEvent("k", 1, b'{"i":1}')] * 300, expected_head=head)
        assert exc.value.recorded and "nothing is lost" in str(exc.value)
        monkeypatch.undo()
    with Store.open(tmp_path / "s", read_only=True) as s:
        assert s.log.count() == 600
