"""Rows as Arrow for DuckDB's insert: the events table's schema, and the two columns whose
generic conversion from Python objects was slow enough to matter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

__all__ = ["ARROW_SCHEMA", "arrow_ids", "arrow_timestamps"]

ARROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("parent", pa.string()),
        ("branch", pa.string()),
        ("seq", pa.int64()),
        ("kind", pa.string()),
        ("schema", pa.int32()),
        ("recorded_at", pa.timestamp("us", tz="UTC")),
        ("payload", pa.string()),
    ]
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def arrow_timestamps(values: list[datetime]) -> pa.Array:
    """A batch's timestamps as Arrow: each distinct datetime converted once (a batch shares one),
    not 1.9 us per row as Arrow's conversion of Python datetimes costs."""
    seen: dict[int, int] = {}
    micros = [seen[id(v)] if id(v) in seen else seen.setdefault(id(v), (v - _EPOCH) // _MICRO) for v in values]
    return pa.array(micros, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def arrow_ids(ids: list[str]) -> pa.Array:
    """Event ids (64 hex digits each) as Arrow from one joined buffer: Arrow's conversion of a
    list of Python strings cost 1.5 us per row at a million."""
    joined = "".join(ids)
    if len(joined) != 64 * len(ids) or len(joined) >= 1 << 31 or not joined.isascii():
        return pa.array(ids, pa.string())
    offsets = np.arange(0, 64 * len(ids) + 1, 64, dtype=np.int32)
    return pa.StringArray.from_buffers(len(ids), pa.py_buffer(offsets), pa.py_buffer(joined.encode()))
