"""The two queries that read a history from DuckDB: a range at once, and page by page."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import duckdb

from store.duck.schema import COLS

__all__ = ["history_spans", "page_history", "query_history"]


def history_spans(segs: list[tuple[str, int]], branch: str, after_seq: int | None) -> list[tuple[str, int, int]]:
    """(branch, after, until) of each stretch of the history ``segs`` (``EventLog.segments``) of
    ``branch`` to read: all of each, or with ``after_seq`` only what follows it on the last."""
    if after_seq is not None:
        return [(b, after_seq if b == branch else -1, hi) for b, hi in segs[-1:]]
    return [(b, -1, hi) for b, hi in segs]


def query_history(
    con: duckdb.DuckDBPyConnection, segs: list[tuple[str, int]], branch: str, after_seq: int | None, kinds: Sequence[str] | None
) -> duckdb.DuckDBPyConnection:
    """The events of the history ``segs`` (``EventLog.segments``) of ``branch``, after ``after_seq``
    of its last segment when given, of ``kinds`` when given, in order: one query."""
    parts: list[str] = []
    params: list[Any] = []
    kind_sql = " AND list_contains(?, kind)" if kinds is not None else ""
    for i, (b, after, hi) in enumerate(history_spans(segs, branch, after_seq)):
        parts.append(f"SELECT {i} AS k, {COLS} FROM events WHERE branch = ? AND seq > ? AND seq <= ?{kind_sql}")
        params += [b, after, hi]
        if kinds is not None:
            params.append(list(kinds))
    sql = f"SELECT {COLS} FROM ({' UNION ALL '.join(parts)}) ORDER BY k, seq"
    return con.execute(sql, params)


def page_history(
    cur: duckdb.DuckDBPyConnection, segs: list[tuple[str, int]], batch_size: int, kinds: Sequence[str] | None
) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of the history ``segs``, a page of at most ``batch_size`` seqs at a time, one
    segment after another: each page is a small sorted query, so memory stays bounded by a page
    whatever the log's size (one ORDER BY over the whole history made DuckDB hold it all: 840 MB
    for 100k events)."""
    kind_sql = " AND list_contains(?, kind)" if kinds is not None else ""
    for b, hi in segs:
        lo = -1
        while lo < hi:
            top = min(hi, lo + batch_size)
            params: list[Any] = [b, lo, top] + ([list(kinds)] if kinds is not None else [])
            yield cur.execute(
                f"SELECT {COLS} FROM events WHERE branch = ? AND seq > ? AND seq <= ?{kind_sql} ORDER BY seq", params
            ).fetchall()
            lo = top
