"""``MemoryEventLog``: the in-memory twin of the DuckDB log, with the same contract.

Used by tests as the model that the DuckDB log is compared against, and by callers that want a
throwaway history (nothing is persisted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

from store.envelope import (
    BranchImport,
    BranchInfo,
    Envelope,
    NewEvent,
    VerifyReport,
    check_branch_name,
    history_segments,
    seal,
)
from store.errors import (
    BranchExists,
    BranchNotFound,
    ConcurrencyError,
    EventNotFound,
    StoreError,
)
from store.verify import verify_rows

__all__ = ["MemoryEventLog"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MemoryEventLog:
    def __init__(self, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self._clock = clock
        self._refs: dict[str, BranchInfo] = {}
        self._rows: dict[str, list[Envelope]] = {}
        self._by_id: dict[str, Envelope] = {}
        self._snapshots: dict[tuple[str, str], dict[int, tuple[str, bytes]]] = {}

    # -- refs ---------------------------------------------------------------------------------
    def init_branch(self, name: str) -> BranchInfo:
        check_branch_name(name)
        if name in self._refs:
            raise BranchExists(name)
        info = BranchInfo(name, None, None, None, -1, None, self._clock())
        self._refs[name] = info
        self._rows[name] = []
        return info

    def fork(self, name: str, *, source: str, at_seq: int) -> BranchInfo:
        check_branch_name(name)
        if name in self._refs:
            raise BranchExists(name)
        base = self.at(source, at_seq)
        info = BranchInfo(name, source, at_seq, base.id, -1, base.id, self._clock())
        self._refs[name] = info
        self._rows[name] = []
        return info

    def branch(self, name: str) -> BranchInfo:
        try:
            return self._refs[name]
        except KeyError:
            raise BranchNotFound(name, sorted(self._refs)) from None

    def branches(self) -> list[BranchInfo]:
        return list(self._refs.values())

    # -- writing ------------------------------------------------------------------------------
    def append(
        self, branch: str, events: Sequence[NewEvent], *, expected_head: str | None, decoded: bool = False
    ) -> list[str]:
        sealed = seal(branch, expected_head, events, decoded=decoded)
        info = self.branch(branch)
        if info.head_id != expected_head:
            raise ConcurrencyError(branch, expected_head, info.head_id)
        now = self._clock()
        parent = info.head_id
        seq = info.head_seq
        rows = self._rows[branch]
        for eid, kind, schema, text in zip(sealed.ids, sealed.kinds, sealed.schemas, sealed.payloads, strict=True):
            seq += 1
            env = Envelope(eid, parent, branch, seq, kind, schema, now, text.encode())
            rows.append(env)
            self._by_id[eid] = env
            parent = eid
        self._refs[branch] = BranchInfo(
            info.name, info.base_branch, info.base_seq, info.base_id, seq, parent, info.created_at
        )
        return sealed.ids

    def import_branches(self, imports: Sequence[BranchImport]) -> None:
        if len({imp.name for imp in imports}) != len(imports):
            raise StoreError("an import names a branch twice: give each branch's events in one import")
        refs, rows, by_id = dict(self._refs), {k: list(v) for k, v in self._rows.items()}, dict(self._by_id)
        try:
            for imp in imports:
                if imp.create is not None:
                    check_branch_name(imp.name)
                    if imp.name in self._refs:
                        raise BranchExists(imp.name)
                    self._refs[imp.name] = imp.create
                    self._rows[imp.name] = []
                if imp.events:
                    self.append(imp.name, imp.events, expected_head=imp.expected_head)
        except BaseException:
            self._refs, self._rows, self._by_id = refs, rows, by_id  # none of it
            raise

    # -- reading ------------------------------------------------------------------------------
    def segments(self, branch: str, until_seq: int | None = None) -> list[tuple[str, int]]:
        return history_segments(self.branch, branch, until_seq)

    def read(
        self,
        branch: str,
        *,
        until_seq: int | None = None,
        after_seq: int | None = None,
        kinds: Sequence[str] | None = None,
    ) -> list[Envelope]:
        segs = self.segments(branch, until_seq)
        if after_seq is not None:
            segs = segs[-1:]
        wanted = None if kinds is None else set(kinds)
        lo = -1 if after_seq is None else after_seq
        out: list[Envelope] = []
        for b, last in segs:
            for e in self._rows[b]:
                if e.seq > last:
                    break
                if (b != branch or e.seq > lo) and (wanted is None or e.kind in wanted):
                    out.append(e)
        return out

    def iter_read(
        self, branch: str, *, until_seq: int | None = None, batch_size: int = 10_000, kinds: Sequence[str] | None = None
    ) -> Iterator[Envelope]:
        yield from self.read(branch, until_seq=until_seq, kinds=kinds)

    def get(self, event_id: str) -> Envelope:
        try:
            return self._by_id[event_id]
        except KeyError:
            raise EventNotFound(event_id) from None

    def find(self, prefix: str, *, limit: int = 2) -> list[Envelope]:
        """Events whose id starts with ``prefix`` (hex), at most ``limit``."""
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            return []
        return [e for i, e in self._by_id.items() if i.startswith(prefix)][:limit]

    def at(self, branch: str, seq: int) -> Envelope:
        self.branch(branch)
        rows = self._rows[branch]
        if type(seq) is not int or not 0 <= seq < len(rows):
            raise EventNotFound(f"{branch}#{seq}")
        return rows[seq]

    def count(self) -> int:
        return sum(len(r) for r in self._rows.values())

    def verify(self) -> VerifyReport:
        problems = verify_rows(list(self._refs.values()), self._rows)
        return VerifyReport(self.count(), len(self._refs), tuple(problems))

    # -- snapshots (a cache of derived state, never a source of truth) -------------------------
    def save_snapshot(self, branch: str, seq: int, key: str, data: bytes, *, event_id: str | None = None) -> None:
        ev = self.at(branch, seq)
        if event_id is not None and event_id != ev.id:
            raise StoreError(f"snapshot for {branch}#{seq} names event {event_id}, the log has {ev.id} there")
        self._snapshots.setdefault((branch, key), {})[seq] = (ev.id, bytes(data))

    def load_snapshot(self, branch: str, until_seq: int | None, key: str) -> tuple[str, int, str, bytes] | None:
        for b, hi in reversed(self.segments(branch, until_seq)):
            found = [s for s in self._snapshots.get((b, key), {}) if s <= hi]
            if found:
                seq = max(found)
                eid, data = self._snapshots[(b, key)][seq]
                return b, seq, eid, data
        return None

    def load_snapshots(
        self, branch: str, until_seq: int | None, keys: Sequence[str]
    ) -> dict[str, tuple[str, int, str, bytes]]:
        found = {k: self.load_snapshot(branch, until_seq, k) for k in keys}
        return {k: v for k, v in found.items() if v is not None}

    def list_snapshots(self, key: str) -> list[tuple[str, int, str]]:
        out = [(b, seq, v[0]) for (b, k), snaps in self._snapshots.items() if k == key for seq, v in snaps.items()]
        return sorted(out)

    def clear_snapshots(self) -> int:
        n = sum(len(v) for v in self._snapshots.values())
        self._snapshots.clear()
        return n

    def close(self) -> None:
        pass

    def __enter__(self) -> MemoryEventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
