"""``DuckEventLog``: the event log on a DuckDB file.

The log owns the connection and the refs it has read, and is composed of parts that each hold
their own state: a ``DuckWriter`` (journal, head cache, commits and the heads file), a
``SnapshotCache`` (snapshot rows, their files and an index of them) and a ``SqlRunner`` (ad-hoc
read-only SQL). Small reads are answered from what the log holds (the latest events written,
``store.duck.tail``; pages of older ones read before, ``store.duck.pages``) without moving the
journal; other reads flush it and query the connection. Appends are one transaction per batch,
ingested from Arrow (see ``store.duck.write``); verification runs in SQL: DuckDB recomputes every
id with its own ``sha256`` and checks the chain with window functions (``store.duck.verify``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import duckdb
import msgspec

from store.duck.errors import OPEN_WRITERS, translate_duckdb_errors, translated_errors, unlocked
from store.duck.heads import HeadsFile
from store.duck.opening import check_openable, connect, journalled_batches, prepare_tables
from store.duck.pages import Pages, near_read
from store.duck.reads import history_spans, page_history, query_history
from store.duck.schema import BRANCH_COLS, COLS, fetch_one, row_envelope
from store.duck.snapshots import SNAPSHOT_SUFFIX, SnapshotCache, check_snapshot_place
from store.duck.sql import SqlResult, SqlRunner
from store.duck.verify import verify_connection
from store.duck.write import JOURNAL_SUFFIX, DuckWriter
from store.envelope import BranchImport, BranchInfo, Envelope, NewEvent, VerifyReport, check_branch_name, history_segments
from store.errors import BranchExists, BranchNotFound, EventNotFound, StoreDamaged, StoreError
from store.journal import Batch, Journal

__all__ = ["DuckEventLog", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


@translate_duckdb_errors
class DuckEventLog:
    """Event log on a DuckDB file (``:memory:`` for a throwaway in-process database)."""

    _lock: threading.RLock  # set by ``translate_duckdb_errors``: each public call holds it

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        read_only: bool = False,
        clock: Callable[[], datetime] = utcnow,
        journal: bool = True,
        flush_every: int = 1000,
        snapshot_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = str(path)
        self.read_only = read_only
        self._clock = clock
        self._key = ""  # the store's real path, once this log holds it for writing (in OPEN_WRITERS)
        # branch -> its ref as first read (name, base and creation never change; heads come from the writer)
        self._branch_meta: dict[str, BranchInfo] = {}
        key = os.path.realpath(self.path) if self.path != ":memory:" else None
        existed = check_openable(self.path, key, create=create, read_only=read_only)
        journalled = journalled_batches(self.path) if key is not None and not read_only and journal else []
        self._con, tables = connect(self.path, read_only=read_only, existed=existed)
        prepare_tables(self._con, self.path, tables, existed=existed, read_only=read_only, create=create)
        self._writer = DuckWriter(
            self._con, clock=clock, flush_every=flush_every, heads=None if key is None else HeadsFile(self.path)
        )
        self._writer.on_drop = self._after_drop
        # where snapshot bytes live (a read-only private copy reads the original's)
        folder = None if key is None else str(snapshot_dir) if snapshot_dir is not None else self.path + SNAPSHOT_SUFFIX
        self._snapshots = SnapshotCache(self._con, folder)
        self._sql = SqlRunner(self._con, self.path)
        self._pages = Pages()  # committed events read before, a page at a time (``store.duck.pages``)
        if key is not None:
            self._attach(key, journal, journalled)
        # every ref, held from here on: this log is the store's only writer, so refs change only
        # through it (names, bases and creation never change; heads come from the writer)
        rows = self._con.execute(f"SELECT {BRANCH_COLS} FROM branches ORDER BY ord").fetchall()
        self._branch_meta = {r[0]: BranchInfo(*r) for r in rows}

    def _attach(self, key: str, journal: bool, journalled: list[Batch]) -> None:
        """A log on disk: DuckDB must hold what the heads file says it committed. Then a read-only
        log is refused while the journal holds events; a writer holds the store (``key``) and
        replays the journal (``journalled``, read before DuckDB opened)."""
        try:
            self._writer.check_heads()
        except StoreDamaged:
            self._con.close()
            raise
        j = Journal(self.path + JOURNAL_SUFFIX)
        if self.read_only:
            if j.size():
                self._con.close()
                raise StoreError(
                    f"store {self.path} has journalled events not yet in the log (its writer stopped without "
                    f"closing it); open it read-write once to recover them (Store.open does this for you)"
                )
            return
        OPEN_WRITERS.add(key)
        self._key = key
        if journal:
            try:
                self._writer.recover(j, journalled)
            except BaseException:
                j.close()
                OPEN_WRITERS.discard(key)
                self._con.close()
                raise

    @property
    def flush_every(self) -> int:
        """Journalled events that trigger a flush into DuckDB."""
        return self._writer.flush_every

    @flush_every.setter
    def flush_every(self, n: int) -> None:
        self._writer.flush_every = n

    def _one(self, sql: str, params: Sequence[Any] | None = None) -> tuple[Any, ...] | None:
        return fetch_one(self._con, sql, params)

    # -- writing ------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"store {self.path} is open read-only; open it without read_only to write")

    @unlocked
    def append(
        self, branch: str, events: Sequence[NewEvent], *, expected_head: str | None, decoded: bool = False
    ) -> list[str]:
        """Append ``events`` to ``branch`` if its head is ``expected_head``; returns their ids once
        they are durable. Group commit: the lock is held while the batch is checked and written
        to the journal, not while it is fsynced, so appends from other threads write theirs
        meanwhile and one fsync makes them all durable (each caller still returns only after its
        own batch is)."""
        with self._lock, translated_errors(self.path):
            self._check_writable()
            ids, ticket = self._writer.append(branch, events, expected_head=expected_head, decoded=decoded)
            journal = self._writer.journal
        if ticket is not None and journal is not None:
            with translated_errors(self.path):
                try:
                    journal.sync(ticket)
                except OSError:  # not durable: this batch (and any written with it) is cut off, as never appended
                    with self._lock:
                        self._writer.drop_unsynced()
                        lost = journal.lost(ticket)
                    if lost:
                        raise
                    # else a flush moved it into DuckDB before the failure was seen: durable after all
        return ids

    def _after_drop(self, gone: set[str]) -> None:
        """The writer dropped batches of ``gone`` after a failed fsync: forget refs that were
        only in them, and read the snapshot index again (rows held for dropped events are gone)."""
        for name in [n for n in self._branch_meta if not self._writer.exists(n)]:
            del self._branch_meta[name]
        if gone:
            self._snapshots.reset(self._writer.held_snapshots())

    def flush(self) -> None:
        """Move journalled batches into DuckDB (one transaction) and empty the journal."""
        self._writer.flush()

    def import_branches(self, imports: Sequence[BranchImport]) -> None:
        """New refs and every import's events in one DuckDB transaction (a bundle's pull)."""
        self._check_writable()
        for imp in imports:
            if imp.create is not None:
                check_branch_name(imp.name)
        self._writer.settle()
        try:
            self._writer.import_branches(imports)
        finally:  # as ``_insert_branch``: what DuckDB committed is held
            for imp in imports:
                if imp.create is not None and self._writer.exists(imp.name):
                    self._branch_meta[imp.name] = imp.create

    # -- refs ---------------------------------------------------------------------------------
    def _insert_branch(self, info: BranchInfo) -> BranchInfo:
        self._check_writable()
        self._writer.settle()
        try:
            self._writer.insert_branch(info)
        finally:  # a ref committed before a later step failed (the heads file on a full disk) is held all the same
            if self._writer.exists(info.name):
                self._branch_meta[info.name] = info
        return info

    def init_branch(self, name: str) -> BranchInfo:
        check_branch_name(name)
        return self._insert_branch(BranchInfo(name, None, None, None, -1, None, self._clock()))

    def fork(self, name: str, *, source: str, at_seq: int) -> BranchInfo:
        check_branch_name(name)
        self._writer.settle()
        if name in self._branch_meta:
            raise BranchExists(name)
        head_seq, head_id = self._writer.logical_head(source)
        held = self._writer.tail.at(source, at_seq) if at_seq <= head_seq else None
        if at_seq == head_seq >= 0 and head_id is not None:  # the usual fork, at the head: known without a read
            base_id = head_id
        elif held is not None:  # recent: held in memory
            base_id = held.id
        elif 0 <= at_seq <= head_seq and (snap := self._snapshots.event_at(source, at_seq)) is not None:
            base_id = snap  # where a snapshot was cached: the id the state rebuilt from it is trusted at (a fork at a depth)
        else:
            base_id = self.at(source, at_seq).id
        return self._insert_branch(BranchInfo(name, source, at_seq, base_id, -1, base_id, self._clock()))

    def branch(self, name: str) -> BranchInfo:
        self._writer.settle()
        meta = self._branch_meta.get(name)
        if meta is None:
            raise BranchNotFound(name, list(self._branch_meta))
        seq, head = self._writer.logical_head(name)
        return msgspec.structs.replace(meta, head_seq=seq, head_id=head)

    def branches(self) -> list[BranchInfo]:
        return [self.branch(name) for name in self._branch_meta]

    # -- reading ------------------------------------------------------------------------------
    def segments(self, branch: str, until_seq: int | None = None) -> list[tuple[str, int]]:
        return history_segments(self.branch, branch, until_seq)

    def _query(
        self, branch: str, until_seq: int | None, after_seq: int | None, kinds: Sequence[str] | None
    ) -> duckdb.DuckDBPyConnection:
        self.flush()
        return query_history(self._con, self.segments(branch, until_seq), branch, after_seq, kinds)

    _env = staticmethod(row_envelope)

    def _near(
        self, branch: str, until_seq: int | None, after_seq: int | None, kinds: Sequence[str] | None
    ) -> list[Envelope] | None:
        """What ``read`` returns, without a flush, where it is small or held (``store.duck.pages``); else None."""
        w = self._writer
        spans = [(b, max(after, -1), min(hi, w.logical_head(b)[0]))  # nothing before seq 0 or past a head to look for
                 for b, after, hi in history_spans(self.segments(branch, until_seq), branch, after_seq)]
        return near_read(self._con, self._pages, w.tail, w.committed, spans, kinds)

    def read(
        self, branch: str, *, until_seq: int | None = None, after_seq: int | None = None, kinds: Sequence[str] | None = None
    ) -> list[Envelope]:
        self._writer.settle()
        near = self._near(branch, until_seq, after_seq, kinds)
        if near is not None:
            return near
        env = self._env
        return [env(r) for r in self._query(branch, until_seq, after_seq, kinds).fetchall()]

    def iter_read(
        self, branch: str, *, until_seq: int | None = None, batch_size: int = 10_000, kinds: Sequence[str] | None = None
    ) -> Iterator[Envelope]:
        # Paged by seq (``store.duck.reads.page_history``); a cursor of its own: the stream may
        # stay open while the caller uses the log.
        self.flush()
        cur = self._con.cursor()
        try:
            env = self._env
            for rows in page_history(cur, self.segments(branch, until_seq), batch_size, kinds):
                for r in rows:
                    yield env(r)
        finally:
            cur.close()

    def get(self, event_id: str) -> Envelope:
        self.flush()
        row = self._one(f"SELECT {COLS} FROM events WHERE id = ? LIMIT 1", [event_id])
        if row is None:
            raise EventNotFound(event_id)
        return self._env(row)

    def find(self, prefix: str, *, limit: int = 2) -> list[Envelope]:
        """Events whose id starts with ``prefix`` (hex), at most ``limit``."""
        self.flush()
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            return []
        rows = self._con.execute(
            f"SELECT {COLS} FROM events WHERE starts_with(id, ?) LIMIT ?", [prefix, limit]
        ).fetchall()
        return [self._env(r) for r in rows]

    def at(self, branch: str, seq: int) -> Envelope:
        self._writer.settle()
        if 0 <= seq <= self._writer.logical_head(branch)[0]:
            near = near_read(self._con, self._pages, self._writer.tail, self._writer.committed, [(branch, seq - 1, seq)], None)
            if near:
                return near[0]
        self.flush()
        row = self._one(f"SELECT {COLS} FROM events WHERE branch = ? AND seq = ?", [branch, seq])
        if row is None:
            self.branch(branch)
            raise EventNotFound(f"{branch}#{seq}")
        return self._env(row)

    def count(self) -> int:
        self.flush()
        row = self._one("SELECT count(*) FROM events")
        assert row is not None
        return int(row[0])

    # -- snapshots ----------------------------------------------------------------------------
    def save_snapshot(self, branch: str, seq: int, key: str, data: bytes, *, event_id: str | None = None) -> None:
        self._check_writable()
        self._writer.settle()
        check_snapshot_place(branch, seq, key, data, self._writer.logical_head(branch)[0])
        at = self.at(branch, seq).id  # held in memory for a recent seq: the id a fork at this seq may take from the row
        if event_id is not None and event_id != at:
            raise StoreError(f"a snapshot of {branch}#{seq} names event {str(event_id)[:80]!r}, but the event there is {at}")
        row = self._snapshots.row(branch, seq, at, key, data)
        replaces = self._snapshots.indexed(branch, seq, key)
        if not self._writer.defer_snapshot(row, replaces=replaces):  # held for the next flush, unless this log has no journal
            self._snapshots.insert(row)
        self._snapshots.note(row)  # found by the next lookup without a query

    def load_snapshot(self, branch: str, until_seq: int | None, key: str) -> tuple[str, int, str, bytes] | None:
        """Latest snapshot on the history of ``branch#until_seq``: (branch, seq, event id, data)."""
        return self.load_snapshots(branch, until_seq, [key]).get(key)

    def load_snapshots(
        self, branch: str, until_seq: int | None, keys: Sequence[str]
    ) -> dict[str, tuple[str, int, str, bytes]]:
        """For each of ``keys``, its latest snapshot on the history of ``branch#until_seq`` (keys
        with none are absent). Positions come from an in-process index of the snapshot rows, read
        once per (branch, key) and kept up to date by ``save_snapshot``; the bytes from the file
        the row names."""
        return self._snapshots.load(self.segments(branch, until_seq), keys)

    def list_snapshots(self, key: str) -> list[tuple[str, int, str]]:
        self.flush()
        return self._snapshots.where(key)

    def clear_snapshots(self) -> int:
        self.flush()
        self._check_writable()
        return self._snapshots.clear()

    # -- integrity and ad-hoc SQL -------------------------------------------------------------
    def verify(self) -> VerifyReport:
        self.flush()
        return verify_connection(self._con)

    def sql(
        self,
        query: str,
        params: Sequence[Any] | None = None,
        *,
        max_rows: int = 10_000,
        max_bytes: int = 8_000_000,
        timeout_s: float = 60.0,
        memory_mb: int = 1024,
    ) -> SqlResult:
        """Run one read-only SELECT with DuckDB's access to files and the network disabled (for
        this database instance, for good: DuckDB cannot turn it back on while it runs; the
        engine itself needs neither). At most ``max_rows`` rows and about ``max_bytes`` bytes of
        values come back (a longer text value is cut, and ``truncated`` says what was left out);
        a query still running after ``timeout_s`` is interrupted, and one that needs more than
        ``memory_mb`` of memory (and as much spilled to disk) is stopped (``StoreError`` both)."""
        self.flush()
        return self._sql.run(query, params, max_rows=max_rows, max_bytes=max_bytes, timeout_s=timeout_s, memory_mb=memory_mb, temp_mb=memory_mb)

    def close(self) -> None:
        try:
            if not self.read_only:
                self.flush()
        finally:
            self._writer.close()
            self._writer.tail.clear()
            self._pages.clear()
            OPEN_WRITERS.discard(self._key)
            self._con.close()

    def __enter__(self) -> DuckEventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
