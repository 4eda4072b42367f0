"""Opening the DuckDB log: what is checked before DuckDB touches a file, then the connection and
its tables.

A WAL left behind means a writer stopped without closing. DuckDB replays it on open and folds it
into the file: one it cannot read would be dropped, and a damaged block found only after that
fold leaves the files changed. So such a store is first read whole, read-only (``probe``), and a
journal is read and checked before DuckDB opens read-write (``journalled_batches``): a store
refused as damaged keeps every file as it was.
"""

from __future__ import annotations

import os

import duckdb

from store.duck.errors import OPEN_WRITERS, READ_ALL, translate_open_error
from store.duck.heads import HEADS_SUFFIX
from store.duck.schema import DDL, FORMAT_VERSION, fetch_one
from store.duck.write import JOURNAL_SUFFIX
from store.errors import StoreDamaged, StoreError, StoreLocked, StoreNotFound
from store.journal import Batch, Journal

__all__ = ["check_openable", "connect", "journalled_batches", "prepare_tables"]


def _nonempty(path: str) -> bool:
    return os.path.exists(path) and bool(os.path.getsize(path))


def check_openable(path: str, key: str | None, *, create: bool, read_only: bool) -> bool:
    """Whether the log at ``path`` (``key``: its real path, None in memory) existed; raises
    ``StoreNotFound`` if it must and does not, ``StoreLocked`` if this process writes it already."""
    exists = key is None or os.path.exists(path)
    if not exists and (read_only or not create):
        raise StoreNotFound(path)
    if key is not None and key in OPEN_WRITERS and not read_only:
        raise StoreLocked(path, f"PID {os.getpid()}", same_process=True)
    return key is not None and exists


def journalled_batches(path: str) -> list[Batch]:
    """The batches recovery will replay: every journal line read and checked before DuckDB opens
    read-write (which folds its WAL into the file), so that a journal refused as damaged leaves
    every file as it was."""
    jpath = path + JOURNAL_SUFFIX
    if os.path.exists(jpath) and os.path.getsize(jpath):
        return Journal(jpath).read_checked()
    return []


def _missing_tables_detail(wal: str) -> str:
    return (f"its write-ahead log {os.path.basename(wal)} ({os.path.getsize(wal)} bytes) did not replay into "
            "tables: DuckDB ignores a WAL whose header is damaged")


def _probe(path: str, wal: str) -> None:
    """Open read-only and check the log is there (its WAL replayed); raise if not."""
    try:
        con = duckdb.connect(path, read_only=True)
    except duckdb.Error as e:
        raise translate_open_error(path, e) from e
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        if "events" in tables:
            # Read every block once: a damaged one must be found before DuckDB writes the file.
            for sql in READ_ALL:
                con.execute(sql).fetchall()
    except duckdb.Error as e:
        raise StoreDamaged(path, "DuckDB could not read log.duckdb", str(e)) from e
    finally:
        con.close()
    if "events" not in tables:
        raise StoreDamaged(path, "log.duckdb holds no event log", _missing_tables_detail(wal))


# A new log's DuckDB blocks: 16 KiB, DuckDB's smallest, instead of its 256 KiB default. A history
# of small events otherwise spends a fresh quarter-megabyte block per table and per segment: 3,158
# bytes per step at 1,000 steps of a growing scaffold, against 897 with 16 KiB blocks. A store
# made earlier keeps the block size its file header names.
BLOCK_SIZE = 16_384


def connect(path: str, *, read_only: bool, existed: bool) -> tuple[duckdb.DuckDBPyConnection, set[str]]:
    """The connection to the log at ``path`` and the tables it holds (a WAL left behind by a
    writer read whole first, read-only, once per unclean stop: a clean close leaves no WAL)."""
    wal = path + ".wal"
    if existed and not read_only and _nonempty(wal):
        _probe(path, wal)
    try:
        con = duckdb.connect(path, read_only=read_only, config={"default_block_size": str(BLOCK_SIZE)})
        con.execute("SET TimeZone = 'UTC'")
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    except duckdb.Error as e:
        raise translate_open_error(path, e) from e
    return con, tables


def prepare_tables(
    con: duckdb.DuckDBPyConnection, path: str, tables: set[str], *, existed: bool, read_only: bool, create: bool
) -> None:
    """Create the log's tables in a new database, or check the format of an existing log; on a
    refusal ``con`` is closed."""
    wal = path + ".wal"
    if "events" not in tables:
        if existed and _nonempty(wal):  # a log that did not replay: damaged, not absent
            con.close()
            raise StoreDamaged(path, "log.duckdb holds no event log", _missing_tables_detail(wal))
        if existed and (written := [f for f in (JOURNAL_SUFFIX, HEADS_SUFFIX) if _nonempty(path + f)]):
            con.close()  # events were written once (their journal or heads file says so): never a fresh log over them
            raise StoreDamaged(path, "log.duckdb holds no event log", f"yet {', '.join(os.path.basename(path) + f for f in written)} "
                               "say events were written to it: its write-ahead log was lost before DuckDB folded it into the file")
        if read_only or not create:
            con.close()
            raise StoreNotFound(path)
        con.begin()
        con.execute(DDL)
        con.execute("INSERT INTO meta VALUES ('format', ?)", [FORMAT_VERSION])
        con.commit()
        return
    row = fetch_one(con, "SELECT value FROM meta WHERE key = 'format'")
    if row is None or row[0] != FORMAT_VERSION:
        found = None if row is None else row[0]
        con.close()
        raise StoreError(
            f"store {path} has log format {found!r}, this engine reads format "
            f"{FORMAT_VERSION!r}: upgrade sia-engine or open the store with the version that wrote it"
        )
