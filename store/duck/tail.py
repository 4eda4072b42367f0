"""``Tail``: the last events a log appended to each branch, held in memory for point reads.

A DuckDB query costs 1-2 ms however little it returns, and the questions an embedding
application asks most often are about what it has just written: the state at the head or a few
events back, the events since the latest snapshot, the id at a fork point. The writer keeps its
last batches per branch (events never change once written, and this log is the store's only
writer, so nothing here goes stale); a read whose every event is held is answered from them, and
anything else goes to DuckDB as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from store.envelope import Envelope
from store.journal import Batch

__all__ = ["Tail"]


class Tail:
    """Up to about ``limit`` of the latest events per branch, as the batches that wrote them."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        # branch -> contiguous batches, oldest first, each with its first seq; and how many events
        self._runs: dict[str, list[tuple[int, Batch]]] = {}
        self._n: dict[str, int] = {}

    def add(self, branch: str, first_seq: int, batch: Batch) -> None:
        """``batch`` was written to ``branch`` at ``first_seq`` onwards."""
        n = len(batch.ids)
        if not n:  # a ref's line
            return
        run = self._runs.get(branch)
        if run and run[-1][0] + len(run[-1][1].ids) != first_seq:
            run = None  # not contiguous with what is held (cannot happen from one writer): start again
        if n > self.limit:
            self._runs.pop(branch, None)
            self._n.pop(branch, None)
            return
        if run is None:
            run = self._runs[branch] = []
            self._n[branch] = 0
        run.append((first_seq, batch))
        self._n[branch] += n
        while self._n[branch] - len(run[0][1].ids) >= self.limit:
            self._n[branch] -= len(run.pop(0)[1].ids)

    def forget(self, branch: str) -> None:
        self._runs.pop(branch, None)
        self._n.pop(branch, None)

    def clear(self) -> None:
        self._runs.clear()
        self._n.clear()

    def covers(self, branch: str, after: int, until: int) -> bool:
        """Whether every event ``branch#after+1 .. branch#until`` is held (an empty range is)."""
        if until <= after:
            return True
        run = self._runs.get(branch)
        if not run:
            return False
        last_first, last = run[-1]
        return run[0][0] <= after + 1 and last_first + len(last.ids) - 1 >= until

    def envelopes(self, branch: str, after: int, until: int, kinds: Sequence[str] | None = None) -> list[Envelope]:
        """The held events ``branch#after+1 .. branch#until`` (``covers`` must be true), of
        ``kinds`` when given."""
        out: list[Envelope] = []
        if until <= after:
            return out
        want = None if kinds is None else set(kinds)
        for first, b in self._runs[branch]:
            end = first + len(b.ids) - 1
            if end <= after or first > until:
                continue
            for i in range(max(0, after + 1 - first), min(len(b.ids), until - first + 1)):
                if want is not None and b.kinds[i] not in want:
                    continue
                parent = b.parent if i == 0 else b.ids[i - 1]
                out.append(Envelope(b.ids[i], parent, branch, first + i, b.kinds[i], b.schemas[i], b.at, b.payloads[i].encode()))
        return out

    def at(self, branch: str, seq: int) -> Envelope | None:
        """The held event ``branch#seq``, or None."""
        if not self.covers(branch, seq - 1, seq):
            return None
        return self.envelopes(branch, seq - 1, seq)[0]
