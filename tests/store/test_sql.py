"""``sia sql``'s engine, ``DuckEventLog.sql``: one read-only SELECT, no file or network access,
and bounded rows, bytes, time and memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from store import DuckEventLog, NewEvent, ReadOnlyQuery, StoreError


def test_sql_is_read_only(tmp_path: Path) -> None:
    with DuckEventLog(tmp_path / "log.duckdb") as log:
        log.init_branch("main")
        log.append("main", [NewEvent("k", 1, b'{"score":0.5}')], expected_head=None)
        cols, rows, truncated = log.sql("SELECT kind, payload->>'score' AS score FROM events")
        assert cols == ["kind", "score"] and rows == [("k", "0.5")] and truncated is None
        cols, rows, _ = log.sql("SELECT json_extract(payload, '$.score')::DOUBLE FROM events WHERE seq = ?", [0])
        assert rows == [(0.5,)]
        for bad, kind in [
            ("DELETE FROM events", "DELETE"),
            ("UPDATE events SET seq = 1", "UPDATE"),
            ("DROP TABLE events", "DROP"),
            ("SELECT 1; DELETE FROM events", "2-statement"),
            ("COPY events TO 'x.csv'", "COPY"),
        ]:
            with pytest.raises(ReadOnlyQuery) as exc:
                log.sql(bad)
            assert str(exc.value).startswith(f"only read-only SELECT queries are allowed, got a {kind} statement")
        with pytest.raises(StoreError, match="SQL does not parse"):
            log.sql("SELEC 1")
        assert log.count() == 1


def test_sql_bounds_memory_and_cuts_lists(tmp_path: Path) -> None:
    """Issue 19, finding 13: a LIST of 3 million values came back whole past --max-bytes 100, and a
    doubling recursive CTE reached 2.96 GB."""
    with DuckEventLog(tmp_path / "log.duckdb") as log:
        log.init_branch("main")
        _, rows, truncated = log.sql("SELECT list(i) AS l, map([1], [2]) AS m FROM range(3000000) t(i)", max_bytes=100)
        assert isinstance(rows[0][0], str) and len(rows[0][0]) < 200 and "[cut: " in rows[0][0] and truncated is not None
        doubling = "WITH RECURSIVE t(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM t WHERE length(s) < 1e12) SELECT length(s) FROM t"
        with pytest.raises(StoreError, match="memory limit"):
            log.sql(doubling, memory_mb=128, timeout_s=60)
        default = log.sql("SELECT current_setting('memory_limit')")[1][0][0]
        assert "128" not in str(default)  # the store's connection has its own limit back


def test_sql_cannot_reach_files_and_its_output_is_bounded(tmp_path: Path) -> None:
    """D10: no file or network access from a query, and rows, bytes and time are bounded."""
    secret = tmp_path / "secret.txt"
    secret.write_text("held-out labels")
    with DuckEventLog(tmp_path / "log.duckdb") as log:
        log.init_branch("main")
        log.append("main", [NewEvent("k", 1, b'{"i":1}')], expected_head=None)
        for q in (f"SELECT * FROM read_text('{secret}')", f"SELECT * FROM read_csv('{secret}')", "SELECT * FROM read_text('/etc/passwd')"):
            with pytest.raises(StoreError, match="disabled by configuration"):
                log.sql(q)
        cols, rows, truncated = log.sql("SELECT range FROM range(50)", max_rows=10)
        assert len(rows) == 10 and truncated is not None and "more than 10 rows" in truncated
        _, rows, truncated = log.sql("SELECT repeat('x', 100000000) AS big", max_bytes=1000)
        assert len(rows) == 1 and rows[0][0].startswith("x" * 1000) and len(rows[0][0]) < 1100
        assert truncated is not None and "1,000 bytes" in truncated
        with pytest.raises(StoreError, match="stopped after 0.2 s"):
            log.sql("SELECT count(*) FROM range(10000000000) a", timeout_s=0.2)
        # the engine's own writes still work afterwards
        log.append("main", [NewEvent("k", 1, b'{"i":2}')], expected_head=log.branch("main").head_id)
        log.flush()
        assert log.count() == 2
