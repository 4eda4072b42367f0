"""Snapshots of the DuckDB log: a droppable cache of reduced state, keyed by (branch, seq, key).

The rows say where and under which key; the bytes live in files beside the database,
``<log>.snapshots/<sha256>``, because DuckDB reads a whole vector of a BLOB column to return one
value (25 ms for one 1 MB snapshot at 1M events, against 0.3 ms for a file).
"""

from __future__ import annotations

import bisect
import hashlib
import os
from collections.abc import Sequence
from typing import Any

import duckdb
import zstandard

from store.duck.schema import fetch_one
from store.errors import StoreError
from store.files import atomic_write

__all__ = ["SNAPSHOT_SUFFIX", "SnapshotCache", "check_snapshot_place"]

SNAPSHOT_SUFFIX = ".snapshots"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # a zstd frame's first bytes; a file without them holds its bytes as they are
_ZSTD_LEVEL = 3
_COMPRESS_ABOVE = 512  # smaller snapshots are stored as they are (a frame costs more than it saves)
_MAX_INFLATED = 1 << 30  # a frame that claims more is damage, not a snapshot (never allocated)
_SNAP_REF = b"sha256:"  # a snapshot row's data that names a file instead of holding the bytes
Found = tuple[str, int, str, bytes]  # (branch, seq, event id, data) of a snapshot


def check_snapshot_place(branch: str, seq: object, key: object, data: object, head: int) -> None:
    """A snapshot's place and key as a row can hold them (``StoreError`` otherwise): a seq that is
    an int from 0 to the branch's head, a key that is text, bytes of data. Checked before the row
    is held, since a held row that DuckDB refuses would fail every later flush."""
    if type(seq) is not int or not 0 <= seq <= head:
        raise StoreError(f"a snapshot's seq must be an event of {branch!r} (0 to #{head}), not {str(seq)[:40]!r}")
    if not isinstance(key, str) or not key or not key.isprintable():
        raise StoreError(f"a snapshot's key must be printable text, not {str(key)[:40]!r}")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise StoreError(f"a snapshot's data must be bytes, not {type(data).__name__}")


class SnapshotCache:
    """The snapshot rows on ``con`` and their files in ``folder`` (None: a log in memory, whose
    rows hold the bytes). Keeps an in-process index of where each (branch, key) has snapshots."""

    def __init__(self, con: duckdb.DuckDBPyConnection, folder: str | None) -> None:
        self._con = con
        self.folder = folder
        # (branch, snapshot key) -> (seqs, [(event id, data when small)]): where snapshots are
        self._index: dict[tuple[str, str], tuple[list[int], list[tuple[str, bytes | None]]]] = {}

    def row(self, branch: str, seq: int, event_id: str, key: str, data: bytes) -> list[Any]:
        """The snapshot's row; its bytes, when the log has a folder for them, written to a file
        named by their hash (``store.files.atomic_write``), which the row names."""
        if self.folder is not None:
            if len(data) > _COMPRESS_ABOVE:
                data = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_content_size=True).compress(data)
            digest = hashlib.sha256(data).hexdigest()
            target = os.path.join(self.folder, digest)
            if not os.path.exists(target):
                atomic_write(target, data, mode=0o666)
            data = _SNAP_REF + digest.encode()
        return [branch, seq, event_id, key, data]

    def insert(self, row: list[Any]) -> None:
        self._con.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?, ?)", row)

    def note(self, row: list[Any]) -> None:
        """Add a row just saved (or held for the next flush) to the index of its (branch, key),
        replacing one at the same seq, so the next lookup needs no query."""
        branch, seq, event_id, key, data = row
        seqs, rows = self._rows(branch, key)  # the committed rows first, when not yet indexed
        entry = (event_id, bytes(data) if len(data) <= 128 else None)
        i = bisect.bisect_left(seqs, seq)
        if i < len(seqs) and seqs[i] == seq:
            rows[i] = entry
        else:
            seqs.insert(i, seq)
            rows.insert(i, entry)

    def indexed(self, branch: str, seq: int, key: str) -> bool:
        """Whether a snapshot of ``key`` at ``branch#seq`` is indexed (committed, or held for the
        next flush); when not, DuckDB holds no row there (the index of (branch, key) is read
        whole before any row is noted in it)."""
        seqs, _ = self._rows(branch, key)
        i = bisect.bisect_left(seqs, seq)
        return i < len(seqs) and seqs[i] == seq

    def reset(self, held: list[list[Any]]) -> None:
        """Drop the index (read again from DuckDB on the next lookup), then note ``held``: rows
        not yet in DuckDB (held for the next flush)."""
        self._index.clear()
        for row in held:
            self.note(row)

    def event_at(self, branch: str, seq: int) -> str | None:
        """The event id a snapshot row already indexed names at ``branch#seq`` (under any key), or
        None. The row was written with the id of the event it caches the state after, so this is
        the id the state read from it is trusted at."""
        for (b, _), (seqs, rows) in self._index.items():
            if b == branch:
                i = bisect.bisect_left(seqs, seq)
                if i < len(seqs) and seqs[i] == seq:
                    return rows[i][0]
        return None

    def load(self, segments: list[tuple[str, int]], keys: Sequence[str]) -> dict[str, Found]:
        """For each of ``keys``, its latest snapshot on the history ``segments`` (keys with none
        are absent). Positions come from the index, read once per (branch, key); the bytes from
        the file the row names."""
        found: dict[str, Found] = {}
        looked: set[str] = set()
        for b, hi in reversed(segments):
            for key in keys:
                if key in looked:
                    continue
                seqs, rows = self._rows(b, key)
                i = bisect.bisect_right(seqs, hi) - 1
                if i < 0:
                    continue
                looked.add(key)
                event_id, ref = rows[i]
                if ref is None:  # bytes held in the row (a store written before snapshot files)
                    row = fetch_one(self._con, "SELECT data FROM snapshots WHERE branch = ? AND seq = ? AND key = ?", [b, seqs[i], key])
                    ref = bytes(row[0]) if row else b""
                data = self._bytes(ref)
                # A snapshot whose file is gone or altered is no snapshot: the caller reduces from
                # the events (``sia verify`` reports it); an older one is not looked for.
                if data is not None:
                    found[key] = (b, seqs[i], event_id, data)
            if len(looked) == len(keys):
                break
        return found

    def _rows(self, branch: str, key: str) -> tuple[list[int], list[tuple[str, bytes | None]]]:
        cached = self._index.get((branch, key))
        if cached is None:
            rows = self._con.execute(
                "SELECT seq, event_id, CASE WHEN octet_length(data) <= 128 THEN data END FROM snapshots "
                "WHERE branch = ? AND key = ? ORDER BY seq",
                [branch, key],
            ).fetchall()
            cached = self._index[(branch, key)] = ([r[0] for r in rows], [(r[1], None if r[2] is None else bytes(r[2])) for r in rows])
        return cached

    def _bytes(self, data: bytes) -> bytes | None:
        if not data.startswith(_SNAP_REF):
            return data  # held in the row (stores written before snapshot files)
        digest = data[len(_SNAP_REF):].decode()
        if self.folder is None:
            return None
        try:
            with open(os.path.join(self.folder, digest), "rb") as f:
                content = f.read()
        except OSError:
            return None
        if hashlib.sha256(content).hexdigest() != digest:
            return None
        return _inflate(content)

    def where(self, key: str) -> list[tuple[str, int, str]]:
        """(branch, seq, event id) of every snapshot under ``key``."""
        rows = self._con.execute(
            "SELECT branch, seq, event_id FROM snapshots WHERE key = ? ORDER BY branch, seq", [key]
        ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def clear(self) -> int:
        """Delete every snapshot row and file; how many rows there were."""
        row = fetch_one(self._con, "SELECT count(*) FROM snapshots")
        self._con.execute("DELETE FROM snapshots")
        self._index.clear()
        if self.folder is not None and os.path.isdir(self.folder):  # the cache's own files
            for name in os.listdir(self.folder):
                os.remove(os.path.join(self.folder, name))
        return int(row[0]) if row else 0


def _inflate(content: bytes) -> bytes | None:
    """A snapshot file's bytes as cached: a zstd frame inflated (None if it is damaged or claims
    more than ``_MAX_INFLATED``), anything else as it is (files written before compression)."""
    if not content.startswith(_ZSTD_MAGIC):
        return content
    try:
        size = zstandard.frame_content_size(content)
        if size < 0 or size > _MAX_INFLATED:
            return None
        out = zstandard.ZstdDecompressor().decompress(content, max_output_size=size)
    except zstandard.ZstdError:
        return None
    return out if len(out) == size else None
