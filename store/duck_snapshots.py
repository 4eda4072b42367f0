"""Snapshots of the DuckDB log: a droppable cache of reduced state, keyed by (branch, seq, key).

The rows say where and under which key; the bytes live in files beside the database,
``<log>.snapshots/<sha256>``, because DuckDB reads a whole vector of a BLOB column to return one
value (25 ms for one 1 MB snapshot at 1M events, against 0.3 ms for a file). A mixin of
``DuckEventLog``.
"""

from __future__ import annotations

import bisect
import hashlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import duckdb

from store.envelope import Envelope
from store.errors import StoreError

__all__ = ["DuckSnapshots", "SNAPSHOT_SUFFIX"]

SNAPSHOT_SUFFIX = ".snapshots"
_SNAP_REF = b"sha256:"  # a snapshot row's data that names a file instead of holding the bytes


class DuckSnapshots:
    _con: duckdb.DuckDBPyConnection
    _snap_dir: str | None
    # (branch, snapshot key) -> (seqs, [(event id, data when small)]): where snapshots are
    _snap_index: dict[tuple[str, str], tuple[list[int], list[tuple[str, bytes | None]]]]
    _pending: list[Any]  # journalled batches not yet in DuckDB (DuckWriter's)
    _pending_snaps: list[list[Any]]  # snapshot rows waiting for those batches' transaction

    if TYPE_CHECKING:  # provided by DuckEventLog and DuckWriter

        def flush(self) -> None: ...

        def _check_writable(self) -> None: ...

        def _one(self, sql: str, params: Sequence[Any] | None = None) -> tuple[Any, ...] | None: ...

        def at(self, branch: str, seq: int) -> Envelope: ...

        def segments(self, branch: str, until_seq: int | None = None) -> list[tuple[str, int]]: ...

        def _logical_head(self, branch: str) -> tuple[int, str | None]: ...

    def save_snapshot(self, branch: str, seq: int, key: str, data: bytes, *, event_id: str | None = None) -> None:
        self._check_writable()
        if event_id is None:
            event_id = self.at(branch, seq).id
        elif seq > self._logical_head(branch)[0]:
            raise StoreError(f"no event {branch}#{seq} to attach a snapshot to (the branch ends at #{self._logical_head(branch)[0]})")
        if self._snap_dir is not None:  # the bytes go to a file named by their hash; the row names it
            digest = hashlib.sha256(data).hexdigest()
            os.makedirs(self._snap_dir, exist_ok=True)
            target = os.path.join(self._snap_dir, digest)
            if not os.path.exists(target):
                tmp = f"{target}.{os.getpid()}.tmp"
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, target)  # a cache: no fsync; a torn or lost file is read as no snapshot
            data = _SNAP_REF + digest.encode()
        row = [branch, seq, event_id, key, data]
        if self._pending:  # its event is still in the journal: the row goes in with the next flush's transaction
            self._pending_snaps.append(row)
        else:
            self._con.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?, ?)", row)
        self._snap_index.pop((branch, key), None)  # re-read on the next lookup

    def load_snapshot(self, branch: str, until_seq: int | None, key: str) -> tuple[str, int, str, bytes] | None:
        """Latest snapshot on the history of ``branch#until_seq``: (branch, seq, event id, data)."""
        return self.load_snapshots(branch, until_seq, [key]).get(key)

    def load_snapshots(
        self, branch: str, until_seq: int | None, keys: Sequence[str]
    ) -> dict[str, tuple[str, int, str, bytes]]:
        """For each of ``keys``, its latest snapshot on the history of ``branch#until_seq`` (keys
        with none are absent). Positions come from an in-process index of the snapshot rows, read
        once per (branch, key); the bytes from the file the row names."""
        self.flush()
        found: dict[str, tuple[str, int, str, bytes]] = {}
        looked: set[str] = set()
        for b, hi in reversed(self.segments(branch, until_seq)):
            for key in keys:
                if key in looked:
                    continue
                seqs, rows = self._snap_rows(b, key)
                i = bisect.bisect_right(seqs, hi) - 1
                if i < 0:
                    continue
                looked.add(key)
                event_id, ref = rows[i]
                if ref is None:  # bytes held in the row (a store written before snapshot files)
                    row = self._one("SELECT data FROM snapshots WHERE branch = ? AND seq = ? AND key = ?", [b, seqs[i], key])
                    ref = bytes(row[0]) if row else b""
                data = self._snapshot_bytes(ref)
                # A snapshot whose file is gone or altered is no snapshot: the caller reduces from
                # the events (``sia verify`` reports it); an older one is not looked for.
                if data is not None:
                    found[key] = (b, seqs[i], event_id, data)
            if len(looked) == len(keys):
                break
        return found

    def _snap_rows(self, branch: str, key: str) -> tuple[list[int], list[tuple[str, bytes | None]]]:
        cached = self._snap_index.get((branch, key))
        if cached is None:
            rows = self._con.execute(
                "SELECT seq, event_id, CASE WHEN octet_length(data) <= 128 THEN data END FROM snapshots "
                "WHERE branch = ? AND key = ? ORDER BY seq",
                [branch, key],
            ).fetchall()
            cached = self._snap_index[(branch, key)] = ([r[0] for r in rows], [(r[1], None if r[2] is None else bytes(r[2])) for r in rows])
        return cached

    def _snapshot_bytes(self, data: bytes) -> bytes | None:
        if not data.startswith(_SNAP_REF):
            return data  # held in the row (stores written before snapshot files)
        digest = data[len(_SNAP_REF):].decode()
        if self._snap_dir is None:
            return None
        try:
            with open(os.path.join(self._snap_dir, digest), "rb") as f:
                content = f.read()
        except OSError:
            return None
        return content if hashlib.sha256(content).hexdigest() == digest else None

    def list_snapshots(self, key: str) -> list[tuple[str, int, str]]:
        self.flush()
        rows = self._con.execute(
            "SELECT branch, seq, event_id FROM snapshots WHERE key = ? ORDER BY branch, seq", [key]
        ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def clear_snapshots(self) -> int:
        self.flush()
        self._check_writable()
        row = self._one("SELECT count(*) FROM snapshots")
        self._con.execute("DELETE FROM snapshots")
        self._snap_index.clear()
        if self._snap_dir is not None and os.path.isdir(self._snap_dir):  # the cache's own files
            for name in os.listdir(self._snap_dir):
                os.remove(os.path.join(self._snap_dir, name))
        return int(row[0]) if row else 0

