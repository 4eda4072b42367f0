"""The DuckDB log's tables, its format version, and the two small queries every part shares.

Tables: ``events`` (one row per event, keyed by ``(branch, seq)``, payload as DuckDB JSON so that
``json_extract`` works on it), ``branches`` (refs: fork point and head, moved by compare-and-swap
inside the append transaction), ``snapshots`` (a droppable cache of reduced state, its bytes in
files beside the database: see ``store.duck.snapshots``) and ``meta`` (the format version).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from store.envelope import Envelope

__all__ = ["BRANCH_COLS", "COLS", "DDL", "FORMAT_VERSION", "branch_names", "fetch_one", "row_envelope"]

FORMAT_VERSION = "1"

DDL = """
CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE branches (
    name VARCHAR PRIMARY KEY, ord BIGINT NOT NULL, base_branch VARCHAR, base_seq BIGINT,
    base_id VARCHAR, head_seq BIGINT NOT NULL, head_id VARCHAR, created_at TIMESTAMPTZ NOT NULL);
CREATE TABLE events (
    id VARCHAR NOT NULL, parent VARCHAR, branch VARCHAR NOT NULL, seq BIGINT NOT NULL,
    kind VARCHAR NOT NULL, schema INTEGER NOT NULL, recorded_at TIMESTAMPTZ NOT NULL,
    payload JSON NOT NULL, PRIMARY KEY (branch, seq));
CREATE TABLE snapshots (
    branch VARCHAR NOT NULL, seq BIGINT NOT NULL, event_id VARCHAR NOT NULL, key VARCHAR NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (branch, seq, key));
"""

COLS = "id, parent, branch, seq, kind, schema, recorded_at, payload"  # an event row, in table order
BRANCH_COLS = "name, base_branch, base_seq, base_id, head_seq, head_id, created_at"  # a BranchInfo


def row_envelope(row: tuple[Any, ...]) -> Envelope:
    """An ``events`` row, as ``COLS`` selects it, as an envelope."""
    return Envelope(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7].encode())


def fetch_one(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> tuple[Any, ...] | None:
    """The first row of ``sql`` (None: no row)."""
    # DuckDB 2 keeps a result open until it is fully fetched: fetch all, keep the first.
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def branch_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every branch, by name (what a ``BranchNotFound`` lists)."""
    return [r[0] for r in con.execute("SELECT name FROM branches ORDER BY name").fetchall()]
