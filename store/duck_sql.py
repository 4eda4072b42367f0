"""``sql``: one read-only SELECT over the DuckDB log, with no file or network access and bounded
output. A mixin of ``DuckEventLog``."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import duckdb

from store.duck_errors import _is_damage
from store.errors import ReadOnlyQuery, StoreDamaged, StoreError

__all__ = ["DuckSql", "SqlResult"]


class SqlResult(NamedTuple):
    """What ``sql`` returns: column names, rows, and what was left out (None: nothing)."""

    cols: list[str]
    rows: list[tuple[Any, ...]]
    truncated: str | None


def _cap_row(row: tuple[Any, ...], budget: int) -> tuple[tuple[Any, ...], int]:
    """The row with text values cut to fit ``budget`` bytes, and the bytes it takes (-1: cut)."""
    out, used, cut = [], 0, False
    for v in row:
        n = len(v) if isinstance(v, (str, bytes)) else len(str(v))
        if used + n > budget and isinstance(v, (str, bytes)):
            keep = max(0, budget - used)
            v = v[:keep] + f"... [cut: {n - keep:,} more]" if isinstance(v, str) else v[:keep]
            cut, n = True, keep
        used += n
        out.append(v)
    return tuple(out), -1 if cut else used


class DuckSql:
    _con: duckdb.DuckDBPyConnection
    path: str

    if TYPE_CHECKING:

        def flush(self) -> None: ...

    def sql(
        self,
        query: str,
        params: Sequence[Any] | None = None,
        *,
        max_rows: int = 10_000,
        max_bytes: int = 8_000_000,
        timeout_s: float = 60.0,
    ) -> SqlResult:
        """Run one read-only SELECT with DuckDB's access to files and the network disabled (for
        this database instance, for good: DuckDB cannot turn it back on while it runs; the
        engine itself needs neither). At most ``max_rows`` rows and about ``max_bytes`` bytes of
        values come back (a longer text value is cut, and ``truncated`` says what was left out);
        a query still running after ``timeout_s`` is interrupted (``StoreError``)."""
        self.flush()
        try:
            statements = self._con.extract_statements(query)
        except duckdb.Error as e:
            raise StoreError(f"SQL does not parse: {e}") from e
        if len(statements) != 1:
            raise ReadOnlyQuery(query, f"{len(statements)}-statement")
        st = statements[0]
        if st.type != duckdb.StatementType.SELECT:
            raise ReadOnlyQuery(query, st.type.name)
        self._con.execute("SET enable_external_access = false")
        cur = self._con.cursor()
        timer = threading.Timer(timeout_s, cur.interrupt)
        timer.start()
        try:
            cur.execute(query, list(params or []))
            cols = [d[0] for d in cur.description or []]
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
        except duckdb.InterruptException as e:
            raise StoreError(f"query stopped after {timeout_s:g} s (the time limit); narrow it, or raise the limit") from e
        except duckdb.Error as e:
            if _is_damage(str(e)):
                raise StoreDamaged(self.path, "DuckDB could not read log.duckdb", str(e)) from e
            raise StoreError(f"query failed: {e}") from e
        finally:
            timer.cancel()
            cur.close()
        return SqlResult(cols, rows, truncated)
