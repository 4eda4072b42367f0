"""The write path of the DuckDB log: small batches through the journal, large ones straight
into a transaction, and the compare-and-swap that moves a branch's ref.

``DuckWriter`` owns what writing needs: the journal, the write cache of each branch's logical
head (journal included), the batches journalled but not yet in DuckDB (and the snapshot rows
that go in with them), the heads as committed to DuckDB and the heads file that records them.
See ``store.journal`` for why small batches take the journal.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from store.duck.arrow import ARROW_SCHEMA, arrow_ids, arrow_timestamps
from store.duck.heads import HeadsFile
from store.duck.recovery import JournalRecovery
from store.duck.schema import COLS, fetch_one
from store.envelope import BranchImport, BranchInfo, NewEvent, seal
from store.errors import BranchExists, BranchNotFound, ConcurrencyError, InvalidEnvelope, StoreError, StoreFull
from store.duck.tail import Tail
from store.journal import Batch, Journal

__all__ = ["ARROW_SCHEMA", "JOURNAL_SUFFIX", "DuckWriter"]  # ARROW_SCHEMA: from store.duck.arrow

JOURNAL_SUFFIX = ".journal"
_SMALL_BATCH = 16  # up to this many rows, a statement of literals beats an Arrow round trip
_DIRECT = 256  # batches at least this big go straight to DuckDB, past the journal
Head = tuple[int, str | None]  # a branch's head: (seq, event id), (-1, fork point) when empty


class DuckWriter(JournalRecovery):
    """Appends and ref moves on the connection ``con``; ``heads`` is None for a log in memory."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, *, clock: Callable[[], datetime], flush_every: int, heads: HeadsFile | None
    ) -> None:
        self._con = con
        self._clock = clock
        self.flush_every = flush_every
        self._heads_file = heads
        self.journal: Journal | None = None  # set by ``recover`` (a log without one commits every batch)
        self._heads: dict[str, Head] = {}  # branch -> logical head, journal included (a write cache)
        self.pending: list[Batch] = []  # journalled, not yet in DuckDB
        self._tickets: list[int] = []  # each pending line's journal ticket (0: recovered, durable)
        self._pending_snaps: list[list[Any]] = []  # snapshot rows that go in with them
        self._replacing: set[tuple[str, int, str]] = set()  # (branch, seq, key) of held rows DuckDB may hold already
        self._pending_n = 0
        # branch -> head as committed to DuckDB: every ref the store holds (this log is its only writer)
        self._committed: dict[str, Head] = {
            r[0]: (r[1], r[2]) for r in con.execute("SELECT name, head_seq, head_id FROM branches").fetchall()
        }
        self.tail = Tail()  # the latest events of each branch, for reads that need no query
        self.on_drop: Callable[[set[str]], None] | None = None  # told which branches a failed fsync moved back

    def check_heads(self) -> None:
        """DuckDB must hold at least what the heads file says it committed (``StoreDamaged``)."""
        assert self._heads_file is not None
        self._heads_file.check(self._con, self._committed)

    @property
    def committed(self) -> dict[str, Head]:
        """Branch -> its head as committed to DuckDB (for reading only)."""
        return self._committed

    def exists(self, name: str) -> bool:
        return name in self._heads or name in self._committed

    def insert_branch(self, info: BranchInfo) -> None:
        """Add the ref ``info`` (``BranchExists`` if its name is taken). A fork: as one journal
        line, durable on return like a batch, which reaches DuckDB with the next flush (a cold fork
        costs one fsync). A new root, or a log without a journal: in a transaction of its own."""
        # A ref may name a base event still in the journal: both move in, in order, before
        # anything reads them from DuckDB (a crash replays them on open).
        if self.exists(info.name):
            raise BranchExists(info.name)
        if self.journal is not None and info.base_branch is not None:
            line = Batch(info.name, -1, None, info.created_at, [], [], [], [], ref=info)
            self.settle()
            self.journal.append(line)
            self.pending.append(line)
            self._tickets.append(0)
            self._heads[info.name] = (info.head_seq, info.head_id)
            return
        self.flush()  # refs journalled before it go in first: DuckDB's order of refs stays the order they were made
        self._con.begin()
        try:
            self._insert_refs([info])
            self._con.commit()
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                self._con.rollback()
            raise
        self._heads[info.name] = self._committed[info.name] = (info.head_seq, info.head_id)
        self._heads_committed()

    def _insert_refs(self, refs: Sequence[BranchInfo]) -> None:
        """Insert new refs inside the open transaction, in order (``BranchExists`` if DuckDB has one)."""
        for info in refs:
            if fetch_one(self._con, "SELECT 1 FROM branches WHERE name = ?", [info.name]):
                raise BranchExists(info.name)
            self._con.execute(
                "INSERT INTO branches SELECT ?, coalesce(max(ord), -1) + 1, ?, ?, ?, ?, ?, ? FROM branches",
                [info.name, info.base_branch, info.base_seq, info.base_id, info.head_seq, info.head_id, info.created_at],
            )

    def append(
        self, branch: str, events: Sequence[NewEvent], *, expected_head: str | None, decoded: bool = False
    ) -> tuple[list[str], int | None]:
        """Append under compare-and-swap; returns the ids and, for a journalled batch, the ticket
        to pass to ``self.journal.sync`` (outside the log's lock: group commit) before telling
        the caller it is durable. None: durable already (committed to DuckDB)."""
        # Ids chain from the expected head; the head moves by compare-and-swap, so a stale
        # expectation writes nothing.
        sealed = seal(branch, expected_head, events, decoded=decoded)
        n = len(sealed.ids)
        now = self._clock()
        if self.journal is None or n >= _DIRECT:
            self.flush()
            direct = Batch(branch, -1, expected_head, now, sealed.ids, sealed.kinds, sealed.schemas, sealed.payloads)
            self._commit([direct])
            self.tail.add(branch, self._heads[branch][0] - n + 1, direct)
            return sealed.ids, None
        self.settle()
        seq, head = self.logical_head(branch)
        if head != expected_head:
            raise ConcurrencyError(branch, expected_head, head)
        batch = Batch(branch, seq + 1, expected_head, now, sealed.ids, sealed.kinds, sealed.schemas, sealed.payloads)
        ticket = self.journal.write(batch)  # durable once synced: ``ticket`` goes back to the caller
        self._heads[branch] = (seq + n, sealed.ids[-1])
        self.tail.add(branch, seq + 1, batch)
        self.pending.append(batch)
        self._tickets.append(ticket)
        self._pending_n += n
        if self._pending_n >= self.flush_every:
            self.flush()  # in DuckDB now (its commit is durable), so the ticket is too
        return sealed.ids, ticket

    def import_branches(self, imports: Sequence[BranchImport]) -> None:
        """Insert the new refs, then every import's events, in one transaction (after a flush):
        all of it commits, or the rollback leaves the log as it was."""
        if len({imp.name for imp in imports}) != len(imports):
            raise StoreError("an import names a branch twice: give each branch's events in one import")
        self.flush()
        now = self._clock()
        batches = []
        for imp in imports:
            if imp.events:
                sealed = imp.sealed if imp.sealed is not None and len(imp.sealed.ids) == len(imp.events) else seal(imp.name, imp.expected_head, imp.events)
                batches.append(Batch(imp.name, -1, imp.expected_head, now, sealed.ids, sealed.kinds, sealed.schemas, sealed.payloads))
        by_branch: dict[str, list[Batch]] = {}
        for b in batches:
            by_branch.setdefault(b.branch, []).append(b)
        con = self._con
        con.begin()
        try:
            for imp in imports:
                info = imp.create
                if info is None:
                    continue
                if self.exists(info.name):
                    raise BranchExists(info.name)
                self._insert_refs([info])
                self._heads[info.name] = (info.head_seq, info.head_id)
            cols = self._move_refs(by_branch)
            if cols[0]:  # refs alone (empty forks) insert no row
                self._insert_rows(cols)
            con.commit()
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.rollback()
            self._heads.clear()  # re-read from the refs, which the rollback restored (nothing is journalled after the flush)
            raise
        for imp in imports:
            if imp.create is not None:
                self._committed[imp.name] = (imp.create.head_seq, imp.create.head_id)
        for b in batches:
            self._committed[b.branch] = self._heads[b.branch]
            self.tail.add(b.branch, self._heads[b.branch][0] - len(b.ids) + 1, b)
        self._heads_committed()

    def logical_head(self, branch: str) -> Head:
        """The branch's head, journalled batches included (``BranchNotFound``)."""
        cached = self._heads.get(branch)
        if cached is None:
            cached = self._committed.get(branch)
            if cached is None:
                raise BranchNotFound(branch, sorted(set(self._committed) | set(self._heads)))
            self._heads[branch] = cached
        return cached

    def defer_snapshot(self, row: list[Any], *, replaces: bool = True) -> bool:
        """Hold a snapshot row for the next flush's transaction (its event may still be
        journalled, and a row of its own would cost a DuckDB transaction: 2-3 ms every 250
        events); False: this log has no journal, insert it now. A held row lost in a crash is a
        cache entry lost: the state is rebuilt from the events."""
        if self.journal is None:
            return False
        self._pending_snaps.append(row)
        if replaces:  # DuckDB may hold a row there: the flush replaces it (an upsert costs 3x a plain insert)
            self._replacing.add((row[0], row[1], row[3]))
        return True

    def settle(self) -> None:
        """Before anything else reads the heads, is written or committed: if an fsync of the
        journal failed, drop what it left unacknowledged (``drop_unsynced``), so none of it is
        read or reaches DuckDB."""
        if self.journal is not None and self.journal.failed is not None:
            self.drop_unsynced()

    def drop_unsynced(self) -> set[str]:
        """After a failed journal fsync: cut the unacknowledged lines off the journal and forget
        their batches (and the snapshot rows held for them), as if never appended; returns the
        branches whose heads moved back. Call under the log's lock."""
        assert self.journal is not None
        kept = self.journal.drop_unsynced()
        gone = {b.branch for b, t in zip(self.pending, self._tickets, strict=True) if t > kept}
        if not gone:
            return gone
        keep = [i for i, t in enumerate(self._tickets) if t <= kept]
        self.pending = [self.pending[i] for i in keep]
        self._tickets = [self._tickets[i] for i in keep]
        self._pending_n = sum(len(b.ids) for b in self.pending)
        for branch in gone:
            self._heads.pop(branch, None)
            self.tail.forget(branch)
        self._restore_pending_heads()
        self._pending_snaps = [r for r in self._pending_snaps if r[0] not in gone or r[1] <= self.logical_head(r[0])[0]]
        if self.on_drop is not None:
            self.on_drop(gone)
        return gone

    def _restore_pending_heads(self) -> None:
        """Each branch's head as what is still journalled puts it, on top of what DuckDB holds
        (branches without a journalled line fall back to their committed head)."""
        for b in self.pending:
            self._heads[b.branch] = (-1, b.ref.head_id) if b.ref is not None else (b.first_seq + len(b.ids) - 1, b.ids[-1])

    def held_snapshots(self) -> list[list[Any]]:
        """Snapshot rows held for the next flush."""
        return list(self._pending_snaps)

    def flush(self) -> None:
        """Move journalled batches (and the snapshot rows held for them) into DuckDB (one
        transaction) and empty the journal."""
        self.settle()  # first: a line whose fsync failed (a batch's, or a fork's ref) is cut off even if nothing else is held
        if not self.pending and not self._pending_snaps:
            return
        lines = bool(self.pending)
        self._commit(self.pending, self._pending_snaps, heads=False)
        # committed: nothing stays held, whatever fails below (a full disk must not make the next flush insert them again)
        self.pending, self._tickets, self._pending_n, self._pending_snaps = [], [], 0, []
        self._replacing.clear()
        assert self.journal is not None
        if lines:
            self.journal.clear()
            self._heads_committed()

    def _commit(self, batches: list[Batch], snaps: Sequence[list[Any]] = (), *, heads: bool = True) -> None:
        """Insert ``batches`` in one transaction: new refs first (lines with ``ref``), then the
        events, moving each branch's ref once. A batch with ``first_seq == -1`` takes its seqs
        from the ref; others must follow it exactly."""
        con = self._con
        refs = [b.ref for b in batches if b.ref is not None]
        by_branch: dict[str, list[Batch]] = {}
        for b in batches:
            if b.ref is None:
                by_branch.setdefault(b.branch, []).append(b)
        con.begin()
        try:
            self._insert_refs(refs)
            cols = self._move_refs(by_branch)
            if cols[0]:
                self._insert_rows(cols)
            latest = {(r[0], r[1], r[3]): r for r in snaps}  # snapshot rows held for this flush: the latest saved at each place
            for verb, rows in (("INSERT OR REPLACE", [r for k, r in latest.items() if k in self._replacing]),
                               ("INSERT", [r for k, r in latest.items() if k not in self._replacing])):
                if rows:
                    con.execute(f"{verb} INTO snapshots VALUES " + ", ".join(["(?, ?, ?, ?, ?)"] * len(rows)), [v for row in rows for v in row])
            con.commit()
        except BaseException:
            with contextlib.suppress(duckdb.Error):  # a failed commit may have ended it: the first error is the one to tell
                con.rollback()
            self._heads.clear()  # re-read from the refs, which the rollback restored; what is journalled still holds
            self._restore_pending_heads()
            raise
        for info in refs:
            self._committed[info.name] = (info.head_seq, info.head_id)
        for b in batches:
            if b.ref is None:
                self._committed[b.branch] = self._heads[b.branch] if b.first_seq < 0 else (b.first_seq + len(b.ids) - 1, b.ids[-1])
        if batches and heads:  # snapshot rows alone move no head
            self._heads_committed()

    def _heads_committed(self) -> None:
        """``write_heads`` after a DuckDB commit: a full disk here says the write was recorded."""
        try:
            self.write_heads()
        except OSError as e:  # committed already: a full disk here must not say the write was lost
            if e.errno in (errno.ENOSPC, errno.EDQUOT) and self._heads_file is not None:
                raise StoreFull(self._heads_file.log_path, str(e), recorded=True) from e
            raise

    def _move_refs(self, by_branch: dict[str, list[Batch]]) -> list[list[Any]]:
        """Move each branch's ref past its batches (inside the open transaction); the rows to
        insert, column by column."""
        cols: list[list[Any]] = [[] for _ in range(8)]
        for branch, group in by_branch.items():
            n = sum(len(b.ids) for b in group)
            first = group[0]
            if first.first_seq < 0:
                seq = self._move_head(branch, first.parent, group[-1].ids[-1], n)
            else:
                seq = first.first_seq
                self._swap(branch, seq - 1, first.parent, seq + n - 1, group[-1].ids[-1])
            for b in group:  # column-wise: a batch of 10k rows costs list copies, not a row loop
                k = len(b.ids)
                cols[0] += b.ids
                cols[1] += [b.parent, *b.ids[:-1]]
                cols[2] += [branch] * k
                cols[3] += range(seq, seq + k)
                cols[4] += b.kinds
                cols[5] += b.schemas
                cols[6] += [b.at] * k
                cols[7] += b.payloads
                seq += k
        return cols

    def _insert_rows(self, cols: list[list[Any]]) -> None:
        total = len(cols[0])
        if total <= _SMALL_BATCH:  # a statement of literals beats an Arrow round trip
            values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * total)
            params = [cols[c][r] for r in range(total) for c in range(8)]
            self._insert(f"INSERT INTO events VALUES {values}", params)
            return
        types = [pa.string(), pa.string(), pa.string(), pa.int64(), pa.string(), pa.int32(), pa.timestamp("us", tz="UTC"), pa.string()]
        arrays = [arrow_ids(c) if i == 0 else pa.array(c, t) if i != 6 else arrow_timestamps(c) for i, (c, t) in enumerate(zip(cols, types, strict=True))]
        table = pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)
        self._con.register("_sia_batch", table)
        try:
            self._insert(f"INSERT INTO events SELECT {COLS} FROM _sia_batch", [])
        finally:
            try:
                self._con.unregister("_sia_batch")
            except duckdb.Error:  # an aborted transaction refuses it; the error that aborted it is the one to see
                pass

    def write_heads(self) -> None:
        """Record the heads DuckDB has committed in ``<log>.heads`` (see ``store.duck.heads``)."""
        if self._heads_file is not None:
            self._heads_file.write(self._committed)

    def _cas(self, branch: str, seq: int, head: str | None, new_seq: int, new_head: str) -> bool:
        """Move the ref from (seq, head) to (new_seq, new_head); False if it is not at (seq, head)."""
        updated = fetch_one(
            self._con,
            "UPDATE branches SET head_seq = ?, head_id = ? WHERE name = ? AND head_seq = ? "
            "AND head_id IS NOT DISTINCT FROM ?",
            [new_seq, new_head, branch, seq, head],
        )
        return updated is not None and updated[0] == 1

    def _swap(self, branch: str, seq: int, head: str | None, new_seq: int, new_head: str) -> None:
        if not self._cas(branch, seq, head, new_seq, new_head):
            row = fetch_one(self._con, "SELECT head_seq, head_id FROM branches WHERE name = ?", [branch])
            raise StoreError(
                f"journalled events for branch {branch!r} follow seq {seq} ({head}), but the log's head is "
                f"{row}: the store was changed outside this engine; keep the journal and restore from a backup"
            )

    def _move_head(self, branch: str, expected: str | None, new_head: str, n: int) -> int:
        """Compare-and-swap the ref from ``expected`` to ``new_head``; returns the first new seq.

        Called with nothing journalled, so the cached head is the ref's; the UPDATE matches on
        both seq and id, so a ref moved behind this log's back is refused, never overwritten."""
        seq, head = self.logical_head(branch)
        if head != expected:
            raise ConcurrencyError(branch, expected, head)
        if not self._cas(branch, seq, head, seq + n, new_head):
            self._heads.pop(branch, None)
            row = fetch_one(self._con, "SELECT head_id FROM branches WHERE name = ?", [branch])
            raise ConcurrencyError(branch, expected, row[0] if row else None)
        self._heads[branch] = (seq + n, new_head)
        return seq + 1

    def _insert(self, sql: str, params: list[Any]) -> None:
        try:
            self._con.execute(sql, params)
        except duckdb.ConversionException as e:  # DuckDB's JSON parser disagreed with ours
            raise InvalidEnvelope(None, f"a payload is not JSON that DuckDB accepts ({e})") from e

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
