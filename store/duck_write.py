"""The write path of the DuckDB log: small batches through the journal, large ones straight
into a transaction, and the compare-and-swap that moves a branch's ref.

A mixin of ``DuckEventLog``; see ``store.journal`` for why small batches take the journal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import duckdb
import msgspec
import pyarrow as pa

from store.envelope import NewEvent, seal
from store.errors import BranchNotFound, ConcurrencyError, InvalidEnvelope, StoreError
from store.journal import Batch, Journal

__all__ = ["DuckWriter", "JOURNAL_SUFFIX", "HEADS_SUFFIX"]

JOURNAL_SUFFIX = ".journal"
HEADS_SUFFIX = ".heads"
_SMALL_BATCH = 16  # up to this many rows, a statement of literals beats an Arrow round trip
_DIRECT = 256  # batches at least this big go straight to DuckDB, past the journal
_COLS = "id, parent, branch, seq, kind, schema, recorded_at, payload"
_ARROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("parent", pa.string()),
        ("branch", pa.string()),
        ("seq", pa.int64()),
        ("kind", pa.string()),
        ("schema", pa.int32()),
        ("recorded_at", pa.timestamp("us", tz="UTC")),
        ("payload", pa.string()),
    ]
)


class DuckWriter:
    _con: duckdb.DuckDBPyConnection
    _journal: Journal | None
    _heads: dict[str, tuple[int, str | None]]
    _pending: list[Batch]
    _pending_snaps: list[list[Any]]
    _pending_n: int
    _clock: Callable[[], datetime]
    flush_every: int
    _committed: dict[str, tuple[int, str | None]]  # branch -> head as committed to DuckDB
    _heads_path: str | None

    def _one(self, sql: str, params: Sequence[Any] | None = None) -> tuple[Any, ...] | None:
        raise NotImplementedError

    def _check_writable(self) -> None:
        raise NotImplementedError

    def _all_branch_names(self) -> list[str]:
        raise NotImplementedError

    def append(self, branch: str, events: Sequence[NewEvent], *, expected_head: str | None) -> list[str]:
        self._check_writable()
        # Ids chain from the expected head; the head moves by compare-and-swap, so a stale
        # expectation writes nothing.
        sealed = seal(branch, expected_head, events)
        n = len(sealed.ids)
        now = self._clock()
        if self._journal is None or n >= _DIRECT:
            self.flush()
            self._commit([Batch(branch, -1, expected_head, now, sealed.ids, sealed.kinds, sealed.schemas, sealed.payloads)])
            return sealed.ids
        seq, head = self._logical_head(branch)
        if head != expected_head:
            raise ConcurrencyError(branch, expected_head, head)
        batch = Batch(branch, seq + 1, expected_head, now, sealed.ids, sealed.kinds, sealed.schemas, sealed.payloads)
        self._journal.append(batch)  # durable from here on
        self._heads[branch] = (seq + n, sealed.ids[-1])
        self._pending.append(batch)
        self._pending_n += n
        if self._pending_n >= self.flush_every:
            self.flush()
        return sealed.ids

    def _logical_head(self, branch: str) -> tuple[int, str | None]:
        cached = self._heads.get(branch)
        if cached is None:
            row = self._one("SELECT head_seq, head_id FROM branches WHERE name = ?", [branch])
            if row is None:
                raise BranchNotFound(branch, self._all_branch_names())
            cached = self._heads[branch] = (row[0], row[1])
        return cached

    def flush(self) -> None:
        """Move journalled batches into DuckDB (one transaction) and empty the journal."""
        if not self._pending:
            return
        self._commit(self._pending, self._pending_snaps)
        self._pending, self._pending_n, self._pending_snaps = [], 0, []
        assert self._journal is not None
        self._journal.clear()

    def _commit(self, batches: list[Batch], snaps: Sequence[list[Any]] = ()) -> None:
        """Insert ``batches`` in one transaction, moving each branch's ref once. A batch with
        ``first_seq == -1`` takes its seqs from the ref; others must follow it exactly."""
        con = self._con
        cols: list[list[Any]] = [[] for _ in range(8)]
        by_branch: dict[str, list[Batch]] = {}
        for b in batches:
            by_branch.setdefault(b.branch, []).append(b)
        con.begin()
        try:
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
            total = len(cols[0])
            if total <= _SMALL_BATCH:  # a statement of literals beats an Arrow round trip
                values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * total)
                params = [cols[c][r] for r in range(total) for c in range(8)]
                self._insert(f"INSERT INTO events VALUES {values}", params)
            else:
                types = [pa.string(), pa.string(), pa.string(), pa.int64(), pa.string(), pa.int32(), pa.timestamp("us", tz="UTC"), pa.string()]
                table = pa.Table.from_arrays([pa.array(c, t) for c, t in zip(cols, types, strict=True)], schema=_ARROW_SCHEMA)
                con.register("_sia_batch", table)
                try:
                    self._insert(f"INSERT INTO events SELECT {_COLS} FROM _sia_batch", [])
                finally:
                    try:
                        con.unregister("_sia_batch")
                    except duckdb.Error:  # an aborted transaction refuses it; the error that aborted it is the one to see
                        pass
            if snaps:  # snapshot rows whose events are in this transaction
                con.execute("INSERT OR REPLACE INTO snapshots VALUES " + ", ".join(["(?, ?, ?, ?, ?)"] * len(snaps)),
                            [v for row in snaps for v in row])
            con.commit()
        except BaseException:
            con.rollback()
            self._heads.clear()  # re-read from the refs, which the rollback restored
            raise
        for b in batches:
            self._committed[b.branch] = (self._heads[b.branch] if b.first_seq < 0 else (b.first_seq + len(b.ids) - 1, b.ids[-1]))
        self._write_heads()

    def _write_heads(self) -> None:
        """Record the heads DuckDB has committed in ``<log>.heads`` (fsynced, renamed into place):
        an open that finds DuckDB behind them knows committed events were lost (a WAL that DuckDB
        skipped without a word because its header was damaged) and says so."""
        if self._heads_path is None:
            return
        tmp = f"{self._heads_path}.{os.getpid()}.tmp"
        data = msgspec.json.encode({b: [seq, head] for b, (seq, head) in sorted(self._committed.items())})
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._heads_path)

    def _cas(self, branch: str, seq: int, head: str | None, new_seq: int, new_head: str) -> bool:
        """Move the ref from (seq, head) to (new_seq, new_head); False if it is not at (seq, head)."""
        updated = self._one(
            "UPDATE branches SET head_seq = ?, head_id = ? WHERE name = ? AND head_seq = ? "
            "AND head_id IS NOT DISTINCT FROM ?",
            [new_seq, new_head, branch, seq, head],
        )
        return updated is not None and updated[0] == 1

    def _swap(self, branch: str, seq: int, head: str | None, new_seq: int, new_head: str) -> None:
        if not self._cas(branch, seq, head, new_seq, new_head):
            row = self._one("SELECT head_seq, head_id FROM branches WHERE name = ?", [branch])
            raise StoreError(
                f"journalled events for branch {branch!r} follow seq {seq} ({head}), but the log's head is "
                f"{row}: the store was changed outside this engine; keep the journal and restore from a backup"
            )

    def _recover(self, batches: list[Batch]) -> None:
        """Replay a journal left by a writer that stopped without closing the log: ``batches``,
        every line read and checked (``Journal.read_checked``) before DuckDB was opened."""
        assert self._journal is not None
        if not self._journal.size():
            return
        for b in batches:
            seq, head = self._logical_head(b.branch)
            if b.first_seq <= seq:  # committed to DuckDB before the journal was emptied
                stored = self._one("SELECT id FROM events WHERE branch = ? AND seq = ?", [b.branch, b.first_seq])
                if stored is None or stored[0] != b.ids[0]:
                    raise StoreError(
                        f"journal batch {b.branch}#{b.first_seq} ({b.ids[0]}) disagrees with the log "
                        f"({stored[0] if stored else 'no event'}): keep the journal and restore from a backup"
                    )
                continue
            if b.first_seq != seq + 1 or b.parent != head:
                raise StoreError(
                    f"journal batch {b.branch}#{b.first_seq} does not follow the log's head {b.branch}#{seq}: "
                    f"keep the journal and restore from a backup"
                )
            self._pending.append(b)
            self._pending_n += len(b.ids)
            self._heads[b.branch] = (seq + len(b.ids), b.ids[-1])
        if self._pending:
            self.flush()
        else:
            self._journal.clear()

    def _move_head(self, branch: str, expected: str | None, new_head: str, n: int) -> int:
        """Compare-and-swap the ref from ``expected`` to ``new_head``; returns the first new seq.

        Called with nothing journalled, so the cached head is the ref's; the UPDATE matches on
        both seq and id, so a ref moved behind this log's back is refused, never overwritten."""
        seq, head = self._logical_head(branch)
        if head != expected:
            raise ConcurrencyError(branch, expected, head)
        if not self._cas(branch, seq, head, seq + n, new_head):
            self._heads.pop(branch, None)
            row = self._one("SELECT head_id FROM branches WHERE name = ?", [branch])
            raise ConcurrencyError(branch, expected, row[0] if row else None)
        self._heads[branch] = (seq + n, new_head)
        return seq + 1

    def _insert(self, sql: str, params: list[Any]) -> None:
        try:
            self._con.execute(sql, params)
        except duckdb.ConversionException as e:  # DuckDB's JSON parser disagreed with ours
            raise InvalidEnvelope(None, f"a payload is not JSON that DuckDB accepts ({e})") from e
