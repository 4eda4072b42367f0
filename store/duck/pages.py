"""``Pages``: events read from DuckDB, held a page at a time, so a read near one answered before
needs no query; and ``near_read``, a small read served from them and the held tail without
moving the journal into DuckDB.

A DuckDB query costs 0.6-1 ms however few rows it returns (it scans the table's columns: there
is no point lookup for a range), while the questions an embedding application asks often are
small and clustered: the state at a depth (a snapshot plus the events since it), the event at a
fork point, a few events back from there. Events never change once committed and this log is
the store's only writer, so a page read once stays true for as long as the log is open: pages
are held up to a byte budget, the least recently used dropped first.

A read is split at each branch's committed head: what DuckDB holds comes from pages (one query
for every page it lacks), what is still journalled from the tail (``store.duck.tail``), which
holds the latest events written. A read the tail cannot complete, or one longer than
``MAX_PAGES`` pages, returns None: the caller flushes and queries as before.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import duckdb

from store.duck.schema import COLS, row_envelope
from store.duck.tail import Tail
from store.envelope import Envelope

__all__ = ["MAX_PAGES", "PAGE", "Pages", "near_read"]

PAGE = 128  # seqs per page
MAX_PAGES = 32  # a read spanning more queries DuckDB directly (a whole history is not a point read)
_ENVELOPE_COST = 560  # bytes an envelope costs beside its payload (two ids, strings, a datetime, the struct), measured


class Pages:
    """Committed events of each branch by page of ``PAGE`` seqs, up to about ``max_bytes``."""

    def __init__(self, max_bytes: int = 16 << 20) -> None:
        self.max_bytes = max_bytes
        # (branch, page) -> its events from seq page * PAGE on, in order (fewer than PAGE where
        # the branch's committed head was inside the page when it was read)
        self._held: OrderedDict[tuple[str, int], list[Envelope]] = OrderedDict()
        self._cost: dict[tuple[str, int], int] = {}
        self.bytes = 0
        self.queries = 0  # DuckDB queries made (tests count them)

    def clear(self) -> None:
        self._held.clear()
        self._cost.clear()
        self.bytes = 0

    def _has(self, branch: str, page: int, until: int) -> list[Envelope] | None:
        """Page ``page`` of ``branch`` if it holds every seq of it up to ``until``."""
        got = self._held.get((branch, page))
        if got is None or page * PAGE + len(got) - 1 < min(until, page * PAGE + PAGE - 1):
            return None
        self._held.move_to_end((branch, page))
        return got

    def _keep(self, branch: str, page: int, events: list[Envelope]) -> None:
        key = (branch, page)
        self.bytes -= self._cost.pop(key, 0)
        cost = sum(len(e.payload) + _ENVELOPE_COST for e in events)
        if cost > self.max_bytes:
            self._held.pop(key, None)
            return
        self._held[key] = events
        self._held.move_to_end(key)
        self._cost[key] = cost
        self.bytes += cost
        while self.bytes > self.max_bytes:
            old, _ = self._held.popitem(last=False)
            self.bytes -= self._cost.pop(old)

    def read(
        self, con: duckdb.DuckDBPyConnection, branch: str, after: int, until: int, committed: int
    ) -> list[Envelope] | None:
        """Events ``branch#after+1 .. branch#until``, all committed (``until <= committed``);
        None where DuckDB lacks some of them (the caller's own query says what it has)."""
        if until <= after:
            return []
        first, last = (after + 1) // PAGE, until // PAGE
        pages = [self._has(branch, p, until) for p in range(first, last + 1)]
        if any(p is None for p in pages):
            lo = next(i for i, p in enumerate(pages) if p is None) + first
            hi = max(i for i, p in enumerate(pages) if p is None) + first
            top = min(hi * PAGE + PAGE - 1, committed)
            self.queries += 1
            rows = con.execute(
                f"SELECT {COLS} FROM events WHERE branch = ? AND seq >= ? AND seq <= ? ORDER BY seq", [branch, lo * PAGE, top]
            ).fetchall()
            got = [row_envelope(r) for r in rows]
            if len(got) != top - lo * PAGE + 1 or any(e.seq != lo * PAGE + i for i, e in enumerate(got)):
                return None  # seqs missing: a damaged store (``verify`` says how); hold nothing of it
            for p in range(lo, hi + 1):
                chunk = got[(p - lo) * PAGE:(p - lo + 1) * PAGE]
                pages[p - first] = chunk
                self._keep(branch, p, chunk)
        return [e for p in pages if p is not None for e in p if after < e.seq <= until]


def near_read(
    con: duckdb.DuckDBPyConnection,
    pages: Pages,
    tail: Tail,
    committed: dict[str, tuple[int, str | None]],
    spans: list[tuple[str, int, int]],
    kinds: Sequence[str] | None,
) -> list[Envelope] | None:
    """The events of ``spans`` ((branch, after, until), as ``store.duck.reads.history_spans``
    gives them), of ``kinds`` when given: what DuckDB has committed (``committed``: branch ->
    its committed head) from ``pages``, the rest from ``tail``; None where the tail lacks part of
    the rest or a span is longer than ``MAX_PAGES`` pages."""
    out: list[Envelope] = []
    want = None if kinds is None else set(kinds)
    for b, after, hi in spans:
        if tail.covers(b, after, hi):
            out += tail.envelopes(b, after, hi, kinds)
            continue
        top = committed.get(b, (-1, None))[0]
        cut = min(hi, top)
        if (cut - after) > MAX_PAGES * PAGE or not tail.covers(b, max(cut, after), hi):
            return None
        got = pages.read(con, b, after, cut, top)
        if got is None:
            return None
        out += got if want is None else [e for e in got if e.kind in want]
        out += tail.envelopes(b, max(cut, after), hi, kinds)
    return out
