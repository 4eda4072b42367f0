"""``<log>.heads``: the heads DuckDB has committed, recorded outside it.

DuckDB ignores a write-ahead log whose header is damaged, without a word: committed events are
then gone. After every commit the writer records each branch's committed head in this file
(``store.files.atomic_write``: fsynced, renamed into place, folder fsynced); an open that finds
DuckDB behind it knows committed events were lost and says so.
"""

from __future__ import annotations

import os

import duckdb
import msgspec

from store.duck.schema import fetch_one
from store.errors import StoreDamaged
from store.files import atomic_write

__all__ = ["HEADS_SUFFIX", "HeadsFile"]

HEADS_SUFFIX = ".heads"


class HeadsFile:
    """The heads file of the log at ``log_path``."""

    def __init__(self, log_path: str) -> None:
        self.log_path = log_path
        self.path = log_path + HEADS_SUFFIX

    def write(self, committed: dict[str, tuple[int, str | None]]) -> None:
        """Record ``committed`` (branch -> head seq and id as committed to DuckDB)."""
        data = msgspec.json.encode({b: [seq, head] for b, (seq, head) in sorted(committed.items())})
        atomic_write(self.path, data, mode=0o644)

    def check(self, con: duckdb.DuckDBPyConnection, committed: dict[str, tuple[int, str | None]]) -> None:
        """DuckDB (``con``, whose refs say ``committed``) must hold at least what the file says
        was committed; ``StoreDamaged`` if not."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return  # a store written before the file existed
        try:
            recorded = msgspec.json.decode(raw, type=dict[str, tuple[int, str | None]])
        except msgspec.MsgspecError as e:
            raise StoreDamaged(self.log_path, os.path.basename(self.path), f"not the heads this engine writes ({e})") from None
        for branch, (seq, head) in recorded.items():
            have = committed.get(branch)
            ok = have is not None and (have == (seq, head) or (have[0] > seq and _id_at(con, branch, seq) == head))
            if not ok:
                found = "no such branch" if have is None else f"its head is {branch}#{have[0]} ({str(have[1])[:12]})"
                raise StoreDamaged(
                    self.log_path, "log.duckdb lost committed events",
                    f"{branch}#{seq} ({str(head)[:12]}) was committed, but {found}: DuckDB skipped (part of) its write-ahead "
                    f"log {os.path.basename(self.log_path)}.wal, or the file was replaced by an older copy",
                )


def _id_at(con: duckdb.DuckDBPyConnection, branch: str, seq: int) -> str | None:
    row = fetch_one(con, "SELECT id FROM events WHERE branch = ? AND seq = ?", [branch, seq])
    return None if row is None else str(row[0])
