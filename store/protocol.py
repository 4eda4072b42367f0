"""The ``EventLog`` protocol: the contract that every log backend honours.

Append-only: events are added in atomic batches under optimistic concurrency, and nothing in the
API updates or deletes one. Branches are refs; a fork is a new ref whose history continues from
an event of another branch, so forking copies no events.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from store.envelope import BranchImport, BranchInfo, Envelope, NewEvent, VerifyReport

__all__ = ["EventLog", "RunsSql"]


@runtime_checkable
class EventLog(Protocol):
    def init_branch(self, name: str) -> BranchInfo:
        """Create an empty root branch."""
        ...

    def fork(self, name: str, *, source: str, at_seq: int) -> BranchInfo:
        """Create branch ``name`` whose history is ``source``'s history up to ``source#at_seq``."""
        ...

    def append(
        self, branch: str, events: Sequence[NewEvent], *, expected_head: str | None, decoded: bool = False
    ) -> list[str]:
        """Append a batch atomically; ``expected_head`` is the id of the last event of the
        branch's history (``None`` for an empty root branch). Returns the new ids. ``decoded``:
        the caller has just decoded every payload as JSON (a recorder that encoded each event
        and decoded it back), so the log checks UTF-8 but does not parse the JSON again."""
        ...

    def import_branches(self, imports: Sequence[BranchImport]) -> None:
        """Create the refs and append the events of every import in one atomic step: all of it
        is in the log afterwards, or none of it (a crash, a taken name, a moved head)."""
        ...

    def branch(self, name: str) -> BranchInfo: ...

    def segments(self, branch: str, until_seq: int | None = None) -> list[tuple[str, int]]:
        """(branch, last seq) for each stretch of the history, oldest first (ancestry, then own)."""
        ...

    def branches(self) -> list[BranchInfo]: ...

    def read(
        self, branch: str, *, until_seq: int | None = None, after_seq: int | None = None, kinds: Sequence[str] | None = None
    ) -> list[Envelope]:
        """The branch's whole history, fork ancestry first, up to ``branch#until_seq``.

        ``after_seq`` keeps only the branch's own events after that seq (ancestry dropped)."""
        ...

    def iter_read(
        self, branch: str, *, until_seq: int | None = None, batch_size: int = 10_000, kinds: Sequence[str] | None = None
    ) -> Iterator[Envelope]:
        """Like ``read`` without ``after_seq``, streamed in batches."""
        ...

    def get(self, event_id: str) -> Envelope: ...

    def find(self, prefix: str, *, limit: int = 2) -> list[Envelope]:
        """Events whose id starts with the hex ``prefix``, at most ``limit``."""
        ...

    def at(self, branch: str, seq: int) -> Envelope:
        """The event stored as ``branch#seq`` (the branch's own events only)."""
        ...

    def count(self) -> int: ...

    def verify(self) -> VerifyReport: ...

    def save_snapshot(self, branch: str, seq: int, key: str, data: bytes, *, event_id: str | None = None) -> None:
        """Cache derived state computed at ``branch#seq`` under ``key`` (a reducer version).
        ``event_id``: the id of that event where the caller knows it (saves a read)."""
        ...

    def load_snapshot(self, branch: str, until_seq: int | None, key: str) -> tuple[str, int, str, bytes] | None:
        """The latest cached state on the history up to ``branch#until_seq``:
        (branch, seq, event id, data), or None."""
        ...

    def load_snapshots(
        self, branch: str, until_seq: int | None, keys: Sequence[str]
    ) -> dict[str, tuple[str, int, str, bytes]]:
        """``load_snapshot`` for several keys at once (keys with nothing cached are absent)."""
        ...

    def list_snapshots(self, key: str) -> list[tuple[str, int, str]]:
        """Every cached snapshot under ``key``: (branch, seq, event id)."""
        ...

    def clear_snapshots(self) -> int:
        """Drop the snapshot cache (it is derived); returns how many were dropped."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class RunsSql(Protocol):
    """A log that answers ad-hoc read-only SQL over its events (the DuckDB log does; ``sia sql``
    needs it): column names, rows, and what was left out (None: nothing)."""

    def sql(
        self,
        query: str,
        params: Sequence[Any] | None = None,
        *,
        max_rows: int = 10_000,
        max_bytes: int = 8_000_000,
        timeout_s: float = 60.0,
        memory_mb: int = 1024,
    ) -> tuple[list[str], list[tuple[Any, ...]], str | None]: ...
