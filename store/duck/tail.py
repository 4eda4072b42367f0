"""``Tail``: the latest events a log appended, held in memory for point reads.

A DuckDB query costs 0.6-2 ms however little it returns, and the questions an embedding
application asks most often are about what it has recently written: the state at the head or
at a depth, the events since a snapshot, the id at a fork point. The writer keeps the batches it
wrote, up to a byte budget across branches (32 MiB unless told), the oldest dropped first; events
never change once written, and this log is the store's only writer, so nothing here goes stale.
A read whose every event is held is answered from them; what is older comes from DuckDB a page
at a time (``store.duck.pages``).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Sequence

from store.envelope import Envelope
from store.journal import Batch

__all__ = ["Tail"]

# what holding costs beside the payloads, measured with tracemalloc (tests/store/test_pages.py
# checks it): an event's id and places in its batch's lists, a batch's own objects
_EVENT_COST = 200
_BATCH_COST = 640


class _Run:
    """One branch's held batches, contiguous, oldest first: parallel lists from ``start`` on
    (dropped batches are skipped, then cut off once they are half the lists)."""

    __slots__ = ("batches", "costs", "firsts", "start")

    def __init__(self) -> None:
        self.firsts: list[int] = []
        self.batches: list[Batch] = []
        self.costs: list[int] = []
        self.start = 0

    def first(self) -> int:
        return self.firsts[self.start]

    def end(self) -> int:
        """The last seq held."""
        return self.firsts[-1] + len(self.batches[-1].ids) - 1

    def drop_oldest(self) -> tuple[Batch, int]:
        i = self.start
        out = self.batches[i], self.costs[i]
        self.start += 1
        if self.start * 2 >= len(self.firsts):
            del self.firsts[: self.start], self.batches[: self.start], self.costs[: self.start]
            self.start = 0
        return out

    def empty(self) -> bool:
        return self.start >= len(self.firsts)


class Tail:
    """The latest events this log wrote, as the batches that wrote them: per branch a contiguous
    run, oldest first; across branches up to about ``max_bytes``, the oldest batch dropped first."""

    def __init__(self, max_bytes: int = 32 << 20) -> None:
        self.max_bytes = max_bytes
        self._runs: dict[str, _Run] = {}
        self._order: deque[tuple[str, Batch]] = deque()  # every held batch, oldest first
        self.bytes = 0

    @staticmethod
    def _cost(batch: Batch) -> int:
        return sum(map(len, batch.payloads)) + _EVENT_COST * len(batch.ids) + _BATCH_COST

    def add(self, branch: str, first_seq: int, batch: Batch) -> None:
        """``batch`` was written to ``branch`` at ``first_seq`` onwards."""
        if not batch.ids:  # a ref's line
            return
        cost = self._cost(batch)
        run = self._runs.get(branch)
        if cost > self.max_bytes or (run is not None and run.end() + 1 != first_seq):
            self.forget(branch)  # too big to hold, or not contiguous with what is held (cannot happen from one writer)
            if cost > self.max_bytes:
                return
            run = None
        if run is None:
            run = self._runs[branch] = _Run()
        run.firsts.append(first_seq)
        run.batches.append(batch)
        run.costs.append(cost)
        self._order.append((branch, batch))
        self.bytes += cost
        while self.bytes > self.max_bytes:
            b, oldest = self._order.popleft()
            run = self._runs[b]
            dropped, c = run.drop_oldest()
            assert dropped is oldest  # each branch's run is oldest first, as the order is
            self.bytes -= c
            if run.empty():
                del self._runs[b]

    def forget(self, branch: str) -> None:
        run = self._runs.pop(branch, None)
        if run is not None:
            self.bytes -= sum(run.costs[run.start:])
            self._order = deque(o for o in self._order if o[0] != branch)

    def clear(self) -> None:
        self._runs.clear()
        self._order.clear()
        self.bytes = 0

    def covers(self, branch: str, after: int, until: int) -> bool:
        """Whether every event ``branch#after+1 .. branch#until`` is held (an empty range is)."""
        if until <= after:
            return True
        run = self._runs.get(branch)
        return run is not None and run.first() <= after + 1 and run.end() >= until

    def envelopes(self, branch: str, after: int, until: int, kinds: Sequence[str] | None = None) -> list[Envelope]:
        """The held events ``branch#after+1 .. branch#until`` (``covers`` must be true), of
        ``kinds`` when given."""
        out: list[Envelope] = []
        if until <= after:
            return out
        want = None if kinds is None else set(kinds)
        run = self._runs[branch]
        k = max(run.start, bisect_right(run.firsts, after + 1, lo=run.start) - 1)  # the batch holding after+1
        while k < len(run.firsts) and run.firsts[k] <= until:
            first, b = run.firsts[k], run.batches[k]
            for i in range(max(0, after + 1 - first), min(len(b.ids), until - first + 1)):
                if want is not None and b.kinds[i] not in want:
                    continue
                parent = b.parent if i == 0 else b.ids[i - 1]
                out.append(Envelope(b.ids[i], parent, branch, first + i, b.kinds[i], b.schemas[i], b.at, b.payloads[i].encode()))
            k += 1
        return out

    def at(self, branch: str, seq: int) -> Envelope | None:
        """The held event ``branch#seq``, or None."""
        if not self.covers(branch, seq - 1, seq):
            return None
        return self.envelopes(branch, seq - 1, seq)[0]
