"""``DuckEventLog``: the event log on a DuckDB file.

Tables: ``events`` (one row per event, keyed by ``(branch, seq)``, payload as DuckDB JSON so that
``json_extract`` works on it), ``branches`` (refs: fork point and head, moved by compare-and-swap
inside the append transaction) and ``snapshots`` (a droppable cache of reduced state, its bytes
in files beside the database: see ``store.duck_snapshots``). Appends are one transaction per batch, ingested from Arrow. Verification runs in SQL: DuckDB recomputes every
id with its own ``sha256`` and checks the chain with window functions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import duckdb
import msgspec

from store.duck_errors import (
    _OPEN_WRITERS,
    _READ_ALL,
    _translate_open_error,
    translate_duckdb_errors,
)
from store.duck_snapshots import SNAPSHOT_SUFFIX, DuckSnapshots
from store.duck_sql import DuckSql, SqlResult
from store.duck_verify import verify_connection
from store.duck_write import _COLS, HEADS_SUFFIX, JOURNAL_SUFFIX, DuckWriter
from store.envelope import (
    BranchInfo,
    Envelope,
    VerifyReport,
    check_branch_name,
    history_segments,
)
from store.errors import (
    BranchExists,
    BranchNotFound,
    EventNotFound,
    StoreDamaged,
    StoreError,
    StoreLocked,
    StoreNotFound,
)
from store.journal import Batch, Journal

__all__ = ["DuckEventLog", "FORMAT_VERSION", "SNAPSHOT_SUFFIX", "SqlResult"]

FORMAT_VERSION = "1"

_DDL = """
CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE branches (
    name VARCHAR PRIMARY KEY, ord BIGINT NOT NULL, base_branch VARCHAR, base_seq BIGINT,
    base_id VARCHAR, head_seq BIGINT NOT NULL, head_id VARCHAR, created_at TIMESTAMPTZ NOT NULL);
CREATE TABLE events (
    id VARCHAR NOT NULL, parent VARCHAR, branch VARCHAR NOT NULL, seq BIGINT NOT NULL,
    kind VARCHAR NOT NULL, schema INTEGER NOT NULL, recorded_at TIMESTAMPTZ NOT NULL,
    payload JSON NOT NULL, PRIMARY KEY (branch, seq));
CREATE TABLE snapshots (
    branch VARCHAR NOT NULL, seq BIGINT NOT NULL, event_id VARCHAR NOT NULL, key VARCHAR NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (branch, seq, key));
"""

_BRANCH_COLS = "name, base_branch, base_seq, base_id, head_seq, head_id, created_at"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@translate_duckdb_errors
class DuckEventLog(DuckSql, DuckSnapshots, DuckWriter):
    """Event log on a DuckDB file (``:memory:`` for a throwaway in-process database)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        read_only: bool = False,
        clock: Callable[[], datetime] = _utcnow,
        journal: bool = True,
        flush_every: int = 1000,
        snapshot_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = str(path)
        # where snapshot bytes live (a read-only private copy reads the original's)
        self._snap_dir: str | None = None
        if self.path != ":memory:":
            self._snap_dir = str(snapshot_dir) if snapshot_dir is not None else self.path + SNAPSHOT_SUFFIX
        self.read_only = read_only
        self.flush_every = flush_every
        # branch -> (head seq, head id) of the logical history, journal included (a write cache)
        self._heads: dict[str, tuple[int, str | None]] = {}
        # branch -> its ref as first read (name, base and creation never change; heads come from _heads)
        self._branch_meta: dict[str, BranchInfo] = {}
        self._pending: list[Batch] = []  # journalled, not yet in DuckDB
        self._pending_snaps: list[list[Any]] = []  # snapshot rows that go in with them
        # (branch, snapshot key) -> (seqs, [(event id, data when small)]): where snapshots are
        self._snap_index: dict[tuple[str, str], tuple[list[int], list[tuple[str, bytes | None]]]] = {}
        self._pending_n = 0
        self._clock = clock
        self._journal: Journal | None = None
        exists = self.path == ":memory:" or os.path.exists(self.path)
        if not exists and (read_only or not create):
            raise StoreNotFound(self.path)
        key = os.path.realpath(self.path) if self.path != ":memory:" else None
        if key is not None and key in _OPEN_WRITERS and not read_only:
            raise StoreLocked(self.path, f"PID {os.getpid()}", same_process=True)
        existed = self.path != ":memory:" and exists
        wal = self.path + ".wal"
        journalled: list[Batch] = []
        if key is not None and not read_only and journal:
            # Read and check every journal line before DuckDB opens read-write (which folds its
            # WAL into the file): a journal refused as damaged leaves every file as it was. These
            # are the batches recovery replays.
            jpath = self.path + JOURNAL_SUFFIX
            if os.path.exists(jpath) and os.path.getsize(jpath):
                journalled = Journal(jpath).read_checked()
        if existed and not read_only and os.path.exists(wal) and os.path.getsize(wal):
            # A WAL left behind means a writer stopped without closing. DuckDB replays it on open
            # and folds it into the file: one it cannot read would be dropped, and a damaged block
            # found only after that fold leaves the files changed. So read everything first,
            # read-only (once per unclean stop: a clean close leaves no WAL).
            self._probe(wal)
        try:
            self._con = duckdb.connect(self.path, read_only=read_only)
            self._con.execute("SET TimeZone = 'UTC'")
            tables = {r[0] for r in self._con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        except duckdb.Error as e:
            raise _translate_open_error(self.path, e) from e
        if "events" not in tables:
            if existed and os.path.exists(wal) and os.path.getsize(wal):  # a log that did not replay: damaged, not absent
                self._con.close()
                raise StoreDamaged(self.path, "log.duckdb holds no event log", self._missing_tables_detail(wal))
            if read_only or not create:
                self._con.close()
                raise StoreNotFound(self.path)
            self._con.begin()
            self._con.execute(_DDL)
            self._con.execute("INSERT INTO meta VALUES ('format', ?)", [FORMAT_VERSION])
            self._con.commit()
        else:
            row = self._one("SELECT value FROM meta WHERE key = 'format'")
            if row is None or row[0] != FORMAT_VERSION:
                found = None if row is None else row[0]
                self._con.close()
                raise StoreError(
                    f"store {self.path} has log format {found!r}, this engine reads format "
                    f"{FORMAT_VERSION!r}: upgrade sia-engine or open the store with the version that wrote it"
                )
        self._heads_path = None if key is None else self.path + HEADS_SUFFIX
        self._committed = {r[0]: (r[1], r[2]) for r in self._con.execute("SELECT name, head_seq, head_id FROM branches").fetchall()}
        if key is None:
            return
        self._check_heads()
        j = Journal(self.path + JOURNAL_SUFFIX)
        if read_only:
            if j.size():
                self._con.close()
                raise StoreError(
                    f"store {self.path} has journalled events not yet in the log (its writer stopped without "
                    f"closing it); open it read-write once to recover them (Store.open does this for you)"
                )
            return
        _OPEN_WRITERS.add(key)
        self._key = key
        if journal:
            self._journal = j
            try:
                self._recover(journalled)
            except BaseException:
                j.close()
                _OPEN_WRITERS.discard(key)
                self._con.close()
                raise

    def _probe(self, wal: str) -> None:
        """Open read-only and check the log is there (its WAL replayed); raise if not."""
        try:
            con = duckdb.connect(self.path, read_only=True)
        except duckdb.Error as e:
            raise _translate_open_error(self.path, e) from e
        try:
            tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
            if "events" in tables:
                # Read every block once: a damaged one must be found before DuckDB writes the file.
                for sql in _READ_ALL:
                    con.execute(sql).fetchall()
        except duckdb.Error as e:
            raise StoreDamaged(self.path, "DuckDB could not read log.duckdb", str(e)) from e
        finally:
            con.close()
        if "events" not in tables:
            raise StoreDamaged(self.path, "log.duckdb holds no event log", self._missing_tables_detail(wal))

    def _check_heads(self) -> None:
        """DuckDB must hold at least what ``<log>.heads`` says it committed (see ``_write_heads``)."""
        assert self._heads_path is not None
        try:
            with open(self._heads_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return  # a store written before the file existed
        try:
            recorded = msgspec.json.decode(raw, type=dict[str, tuple[int, str | None]])
        except msgspec.MsgspecError as e:
            self._con.close()
            raise StoreDamaged(self.path, os.path.basename(self._heads_path), f"not the heads this engine writes ({e})") from None
        for branch, (seq, head) in recorded.items():
            have = self._committed.get(branch)
            ok = have is not None and (have == (seq, head) or (have[0] > seq and self._id_at(branch, seq) == head))
            if not ok:
                self._con.close()
                found = "no such branch" if have is None else f"its head is {branch}#{have[0]} ({str(have[1])[:12]})"
                raise StoreDamaged(
                    self.path, "log.duckdb lost committed events",
                    f"{branch}#{seq} ({str(head)[:12]}) was committed, but {found}: DuckDB skipped (part of) its write-ahead "
                    f"log {os.path.basename(self.path)}.wal, or the file was replaced by an older copy",
                )

    def _id_at(self, branch: str, seq: int) -> str | None:
        row = self._one("SELECT id FROM events WHERE branch = ? AND seq = ?", [branch, seq])
        return None if row is None else str(row[0])

    @staticmethod
    def _missing_tables_detail(wal: str) -> str:
        return (f"its write-ahead log {os.path.basename(wal)} ({os.path.getsize(wal)} bytes) did not replay into "
                "tables: DuckDB ignores a WAL whose header is damaged")

    def _one(self, sql: str, params: Sequence[Any] | None = None) -> tuple[Any, ...] | None:
        # DuckDB 2 keeps a result open until it is fully fetched: fetch all, keep the first.
        rows = self._con.execute(sql, params or []).fetchall()
        return rows[0] if rows else None

    # -- refs ---------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"store {self.path} is open read-only; open it without read_only to write")

    def _insert_branch(self, info: BranchInfo) -> BranchInfo:
        # No flush first: a ref may name a base event still in the journal, which is durable and
        # moves in before anything reads the log (every read flushes; a crash replays it on open).
        self._check_writable()
        self._con.begin()
        try:
            if self._one("SELECT 1 FROM branches WHERE name = ?", [info.name]):
                raise BranchExists(info.name)
            self._con.execute(
                "INSERT INTO branches SELECT ?, coalesce(max(ord), -1) + 1, ?, ?, ?, ?, ?, ? FROM branches",
                [info.name, info.base_branch, info.base_seq, info.base_id, info.head_seq, info.head_id, info.created_at],
            )
            self._con.commit()
        except BaseException:
            self._con.rollback()
            raise
        self._branch_meta[info.name] = info
        self._heads[info.name] = self._committed[info.name] = (info.head_seq, info.head_id)
        self._write_heads()
        return info

    def init_branch(self, name: str) -> BranchInfo:
        check_branch_name(name)
        return self._insert_branch(BranchInfo(name, None, None, None, -1, None, self._clock()))

    def fork(self, name: str, *, source: str, at_seq: int) -> BranchInfo:
        check_branch_name(name)
        if name in self._branch_meta:
            raise BranchExists(name)
        head_seq, head_id = self._logical_head(source)
        if at_seq == head_seq >= 0 and head_id is not None:  # the usual fork, at the head: known without a read
            base_id = head_id
        else:
            base_id = self.at(source, at_seq).id
        return self._insert_branch(BranchInfo(name, source, at_seq, base_id, -1, base_id, self._clock()))

    def _all_branch_names(self) -> list[str]:
        return [r[0] for r in self._con.execute("SELECT name FROM branches ORDER BY name").fetchall()]

    def branch(self, name: str) -> BranchInfo:
        meta = self._branch_meta.get(name)
        if meta is not None:  # refs never change but for their heads, which the write cache knows
            seq, head = self._logical_head(name)
            return msgspec.structs.replace(meta, head_seq=seq, head_id=head)
        self.flush()
        row = self._one(f"SELECT {_BRANCH_COLS} FROM branches WHERE name = ?", [name])
        if row is None:
            raise BranchNotFound(name, self._all_branch_names())
        info = self._branch_meta[name] = BranchInfo(*row)
        return info

    def branches(self) -> list[BranchInfo]:
        self.flush()
        rows = self._con.execute(f"SELECT {_BRANCH_COLS} FROM branches ORDER BY ord").fetchall()
        return [BranchInfo(*r) for r in rows]

    # -- reading ------------------------------------------------------------------------------
    def segments(self, branch: str, until_seq: int | None = None) -> list[tuple[str, int]]:
        return history_segments(self.branch, branch, until_seq)

    def _query(
        self,
        branch: str,
        until_seq: int | None,
        after_seq: int | None,
        kinds: Sequence[str] | None,
        con: duckdb.DuckDBPyConnection | None = None,
    ) -> duckdb.DuckDBPyConnection:
        self.flush()
        segs = self.segments(branch, until_seq)
        lo = -1
        if after_seq is not None:
            segs, lo = segs[-1:], after_seq
        parts: list[str] = []
        params: list[Any] = []
        kind_sql = ""
        if kinds is not None:
            kind_sql = " AND list_contains(?, kind)"
        for i, (b, hi) in enumerate(segs):
            parts.append(f"SELECT {i} AS k, {_COLS} FROM events WHERE branch = ? AND seq > ? AND seq <= ?{kind_sql}")
            params += [b, lo if b == branch else -1, hi]
            if kinds is not None:
                params.append(list(kinds))
        sql = f"SELECT {_COLS} FROM ({' UNION ALL '.join(parts)}) ORDER BY k, seq"
        return (con or self._con).execute(sql, params)

    @staticmethod
    def _env(row: tuple[Any, ...]) -> Envelope:
        return Envelope(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7].encode())

    def read(
        self,
        branch: str,
        *,
        until_seq: int | None = None,
        after_seq: int | None = None,
        kinds: Sequence[str] | None = None,
    ) -> list[Envelope]:
        env = self._env
        return [env(r) for r in self._query(branch, until_seq, after_seq, kinds).fetchall()]

    def iter_read(
        self, branch: str, *, until_seq: int | None = None, batch_size: int = 10_000, kinds: Sequence[str] | None = None
    ) -> Iterator[Envelope]:
        # Paged by seq, one segment of the history at a time: each page is a small sorted query,
        # so memory stays bounded by a page whatever the log's size (one ORDER BY over the whole
        # history made DuckDB hold it all: 840 MB for 100k events). A cursor of its own: the
        # stream may stay open while the caller uses the log.
        self.flush()
        segs = self.segments(branch, until_seq)
        kind_sql = " AND list_contains(?, kind)" if kinds is not None else ""
        cur = self._con.cursor()
        try:
            env = self._env
            for b, hi in segs:
                lo = -1
                while lo < hi:
                    top = min(hi, lo + batch_size)
                    params: list[Any] = [b, lo, top] + ([list(kinds)] if kinds is not None else [])
                    rows = cur.execute(
                        f"SELECT {_COLS} FROM events WHERE branch = ? AND seq > ? AND seq <= ?{kind_sql} ORDER BY seq", params
                    ).fetchall()
                    for r in rows:
                        yield env(r)
                    lo = top
        finally:
            cur.close()

    def get(self, event_id: str) -> Envelope:
        self.flush()
        row = self._one(f"SELECT {_COLS} FROM events WHERE id = ? LIMIT 1", [event_id])
        if row is None:
            raise EventNotFound(event_id)
        return self._env(row)

    def find(self, prefix: str, *, limit: int = 2) -> list[Envelope]:
        """Events whose id starts with ``prefix`` (hex), at most ``limit``."""
        self.flush()
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            return []
        rows = self._con.execute(
            f"SELECT {_COLS} FROM events WHERE starts_with(id, ?) LIMIT ?", [prefix, limit]
        ).fetchall()
        return [self._env(r) for r in rows]

    def at(self, branch: str, seq: int) -> Envelope:
        self.flush()
        row = self._one(f"SELECT {_COLS} FROM events WHERE branch = ? AND seq = ?", [branch, seq])
        if row is None:
            self.branch(branch)
            raise EventNotFound(f"{branch}#{seq}")
        return self._env(row)

    def count(self) -> int:
        self.flush()
        row = self._one("SELECT count(*) FROM events")
        assert row is not None
        return int(row[0])

    # -- integrity ----------------------------------------------------------------------------
    def verify(self) -> VerifyReport:
        self.flush()
        return verify_connection(self._con)

    # -- ad-hoc SQL ---------------------------------------------------------------------------
    def close(self) -> None:
        try:
            if not self.read_only:
                self.flush()
        finally:
            if self._journal is not None:
                self._journal.close()
            _OPEN_WRITERS.discard(getattr(self, "_key", ""))
            self._con.close()

    def __enter__(self) -> DuckEventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
