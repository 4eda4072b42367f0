"""``Journal``: the durable write-ahead file in front of the DuckDB log.

A DuckDB commit costs about 2 ms on a small machine whatever its size (statement overhead, then
the WAL fsync), which would dominate a loop that records every step before the next. Small
batches are therefore made durable by appending one line to ``log.duckdb.journal`` and fsyncing
it (well under a millisecond); they reach DuckDB in one transaction per ~thousand events, before
any read, and when the log closes. After a crash the next read-write open replays the journal's
complete lines into DuckDB (a torn last line was never acknowledged, so it is dropped) and
empties it. The journal is a buffer, never a second source of truth: every line it holds is
either already in DuckDB (checked by id) or follows the branch's head there.
"""

from __future__ import annotations

import os
from datetime import datetime

import msgspec

from store.errors import StoreError

__all__ = ["Batch", "Journal"]


class Batch(msgspec.Struct):
    """A sealed batch for one branch: rows ``first_seq ..`` chained after ``parent``."""

    branch: str
    first_seq: int
    parent: str | None
    at: datetime
    ids: list[str]
    kinds: list[str]
    schemas: list[int]
    payloads: list[str]


_ENC = msgspec.json.Encoder()
_DEC = msgspec.json.Decoder(Batch)


class Journal:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return self._fd

    def append(self, batch: Batch) -> None:
        """Write one batch as one line; durable on return."""
        fd = self._open()
        data = _ENC.encode(batch) + b"\n"
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)

    def read(self) -> list[Batch]:
        """Every complete batch, in order. Only the last line may be torn (each line is fsynced
        before the next is written); a bad line before the last is corruption."""
        try:
            with open(self.path, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            return []
        tail = lines.pop()  # b"" when the file ends with a newline, else a torn write
        out = []
        for i, line in enumerate(lines):
            try:
                out.append(_DEC.decode(line))
            except msgspec.MsgspecError as e:
                raise StoreError(
                    f"journal {self.path} line {i + 1} is damaged ({e}); it is not the last line, so it is not a "
                    f"torn write: keep the file for inspection and restore the store from a backup"
                ) from None
        del tail
        return out

    def clear(self) -> None:
        """Empty the journal (after its batches are committed to DuckDB)."""
        fd = self._open()
        os.ftruncate(fd, 0)
        os.fsync(fd)

    def size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except FileNotFoundError:
            return 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
