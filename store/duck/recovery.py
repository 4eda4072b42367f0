"""Journal recovery: what a writer that stopped without closing the log left in its journal,
checked against DuckDB and replayed into it (each line was read and checked first, by
``Journal.read_checked``, before DuckDB was opened)."""

from __future__ import annotations


import duckdb

from store.duck.schema import fetch_one
from store.envelope import BranchInfo
from store.errors import StoreError
from store.journal import Batch, Journal

__all__ = ["JournalRecovery"]


class JournalRecovery:
    """``DuckWriter``'s recovery of its journal (a part of the writer, kept apart to read)."""

    _con: duckdb.DuckDBPyConnection
    journal: Journal | None
    pending: list[Batch]
    _tickets: list[int]
    _heads: dict[str, tuple[int, str | None]]
    _committed: dict[str, tuple[int, str | None]]
    _pending_n: int

    def logical_head(self, branch: str) -> tuple[int, str | None]:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def recover(self, journal: Journal, batches: list[Batch]) -> None:
        """Take ``journal`` as the writer's (``self``) and replay what a writer that stopped without closing
        the log left in it: ``batches``, every line read and checked (``Journal.read_checked``)
        before DuckDB was opened."""
        self.journal = journal
        if not journal.size():
            return
        for b in batches:
            if b.ref is not None:
                if b.branch in self._committed:  # committed to DuckDB before the journal was emptied
                    row = fetch_one(self._con, "SELECT base_branch, base_seq, base_id FROM branches WHERE name = ?", [b.branch])
                    if row is None or tuple(row) != (b.ref.base_branch, b.ref.base_seq, b.ref.base_id):
                        raise StoreError(
                            f"journalled ref {b.branch!r} (from {b.ref.base_branch}#{b.ref.base_seq}) disagrees with the log's "
                            f"({row}): keep the journal and restore from a backup"
                        )
                    continue
                self._check_base(b.ref)
                self.pending.append(b)
                self._tickets.append(0)
                self._heads[b.branch] = (-1, b.ref.head_id)
                continue
            seq, head = self.logical_head(b.branch)
            if b.first_seq <= seq:  # committed to DuckDB before the journal was emptied
                stored = fetch_one(self._con, "SELECT id FROM events WHERE branch = ? AND seq = ?", [b.branch, b.first_seq])
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
            self.pending.append(b)
            self._tickets.append(0)
            self._pending_n += len(b.ids)
            self._heads[b.branch] = (seq + len(b.ids), b.ids[-1])
        if self.pending:
            self.flush()
        else:
            journal.clear()

    def _check_base(self, ref: BranchInfo) -> None:
        """A journalled fork's base must be the event at its seq, in DuckDB or journalled before it."""
        assert ref.base_branch is not None and ref.base_seq is not None
        found: str | None = None
        for b in reversed(self.pending):
            if b.ref is None and b.branch == ref.base_branch and b.first_seq <= ref.base_seq < b.first_seq + len(b.ids):
                found = b.ids[ref.base_seq - b.first_seq]
                break
        else:
            row = fetch_one(self._con, "SELECT id FROM events WHERE branch = ? AND seq = ?", [ref.base_branch, ref.base_seq])
            found = None if row is None else str(row[0])
        if found is None or found != ref.base_id:
            raise StoreError(
                f"journalled fork {ref.name!r} grows from {ref.base_branch}#{ref.base_seq} ({str(ref.base_id)[:12]}), which "
                f"the log holds as {str(found)[:12] if found else 'no event'}: keep the journal and restore from a backup"
            )
