"""The event log on a DuckDB file: ``DuckEventLog`` and the parts it is composed of.

``log`` (the log: connection, refs, reads), ``opening`` (checks before DuckDB touches a file),
``write`` (the writer: journal, head cache, commits), ``heads`` (the heads file), ``snapshots``
(the snapshot cache), ``sql`` (ad-hoc read-only SQL), ``verify`` (the chain checked in SQL),
``errors`` (DuckDB's errors as the store's, and the per-call lock), ``schema`` (the tables).
"""

from __future__ import annotations

from store.duck.errors import OPEN_WRITERS
from store.duck.heads import HEADS_SUFFIX
from store.duck.log import DuckEventLog, utcnow
from store.duck.schema import FORMAT_VERSION
from store.duck.snapshots import SNAPSHOT_SUFFIX
from store.duck.sql import SqlResult
from store.duck.write import JOURNAL_SUFFIX

__all__ = [
    "FORMAT_VERSION",
    "HEADS_SUFFIX",
    "JOURNAL_SUFFIX",
    "OPEN_WRITERS",
    "SNAPSHOT_SUFFIX",
    "DuckEventLog",
    "SqlResult",
    "utcnow",
]
