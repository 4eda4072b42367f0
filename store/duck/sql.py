"""``sql``: one read-only SELECT over the DuckDB log, with no file or network access and bounded
output."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import duckdb

from store.duck.errors import is_damage
from store.errors import ReadOnlyQuery, StoreDamaged, StoreError

__all__ = ["SqlResult", "SqlRunner"]


class SqlResult(NamedTuple):
    """What ``sql`` returns: column names, rows, and what was left out (None: nothing)."""

    cols: list[str]
    rows: list[tuple[Any, ...]]
    truncated: str | None


def _cap_row(row: tuple[Any, ...], budget: int) -> tuple[tuple[Any, ...], int]:
    """The row with values cut to fit ``budget`` bytes, and the bytes it takes (-1: cut). Text and
    bytes are cut in place; a LIST, MAP or STRUCT (or any other value) that does not fit becomes
    its text, cut the same way."""
    out, used, cut = [], 0, False
    for v in row:
        n = len(v) if isinstance(v, (str, bytes)) else len(str(v))
        if used + n > budget:
            keep = max(0, budget - used)
            if not isinstance(v, (str, bytes)):
                v = str(v)
            v = v[:keep] + f"... [cut: {n - keep:,} more]" if isinstance(v, str) else v[:keep]
            cut, n = True, keep
        used += n
        out.append(v)
    return tuple(out), -1 if cut else used


def _fetch_capped(cur: duckdb.DuckDBPyConnection, max_rows: int, max_bytes: int) -> tuple[list[tuple[Any, ...]], str | None]:
    """The rows of the executed cursor, at most ``max_rows`` and about ``max_bytes`` bytes of
    values, and what was left out (None: nothing)."""
    rows: list[tuple[Any, ...]] = []
    size, truncated = 0, None
    while batch := cur.fetchmany(256):
        for r in batch:
            if len(rows) >= max_rows:
                truncated = f"more than {max_rows} rows: showing the first {max_rows} (raise the row limit to see more)"
                break
            r, n = _cap_row(r, max_bytes - size)
            if n < 0:
                truncated = f"values over {max_bytes:,} bytes in all: cut there (raise the byte limit to see more)"
                rows.append(r)
                break
            size += n
            rows.append(r)
        if truncated:
            break
    return rows, truncated


class SqlRunner:
    """Read-only queries on the connection ``con`` of the store at ``path``."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: str) -> None:
        self._con = con
        self.path = path

    def _check_select(self, query: str) -> None:
        """``query`` must be one SELECT (``ReadOnlyQuery``; ``StoreError`` if it does not parse)."""
        try:
            statements = self._con.extract_statements(query)
        except duckdb.Error as e:
            raise StoreError(f"SQL does not parse: {e}") from e
        if len(statements) != 1:
            raise ReadOnlyQuery(query, f"{len(statements)}-statement")
        st = statements[0]
        if st.type != duckdb.StatementType.SELECT:
            raise ReadOnlyQuery(query, st.type.name)

    def run(
        self, query: str, params: Sequence[Any] | None, *, max_rows: int, max_bytes: int, timeout_s: float,
        memory_mb: int = 1024, temp_mb: int = 1024,
    ) -> SqlResult:
        """See ``DuckEventLog.sql``."""
        self._check_select(query)
        self._con.execute("SET enable_external_access = false")
        with _limits(self._con, memory_mb, temp_mb):
            return self._run(query, params, max_rows=max_rows, max_bytes=max_bytes, timeout_s=timeout_s, memory_mb=memory_mb)

    def _run(self, query: str, params: Sequence[Any] | None, *, max_rows: int, max_bytes: int, timeout_s: float, memory_mb: int) -> SqlResult:
        cur = self._con.cursor()
        timer = threading.Timer(timeout_s, cur.interrupt)
        timer.start()
        try:
            cur.execute(query, list(params or []))
            cols = [d[0] for d in cur.description or []]
            rows, truncated = _fetch_capped(cur, max_rows, max_bytes)
        except duckdb.InterruptException as e:
            raise StoreError(f"query stopped after {timeout_s:g} s (the time limit); narrow it, or raise the limit") from e
        except duckdb.OutOfMemoryException as e:
            raise StoreError(f"query stopped at its memory limit ({memory_mb} MB, and as much spilled to disk); narrow it") from e
        except duckdb.Error as e:
            if is_damage(str(e)):
                raise StoreDamaged(self.path, "DuckDB could not read log.duckdb", str(e)) from e
            raise StoreError(f"query failed: {e}") from e
        finally:
            timer.cancel()
            cur.close()
        return SqlResult(cols, rows, truncated)


@contextlib.contextmanager
def _limits(con: duckdb.DuckDBPyConnection, memory_mb: int, temp_mb: int) -> Iterator[None]:
    """DuckDB's memory and spill limits for one query; DuckDB's defaults (which the engine never
    changes) put back after it."""
    try:
        con.execute(f"SET memory_limit = '{int(memory_mb)}MB'")
        con.execute(f"SET max_temp_directory_size = '{int(temp_mb)}MB'")
        yield
    finally:
        for setting in ("memory_limit", "max_temp_directory_size"):
            with contextlib.suppress(duckdb.Error):  # the query's own error is the one to tell
                con.execute(f"RESET {setting}")
