"""``Store``: one directory holding the event log (``log.duckdb``) and its blobs (``blobs/``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from store.blobs import BlobStore
from store.duck import DuckEventLog, _utcnow
from store.duck_write import JOURNAL_SUFFIX
from store.errors import StoreNotFound
from store.protocol import EventLog

__all__ = ["Store", "LOG_FILE", "BLOB_DIR"]

LOG_FILE = "log.duckdb"
BLOB_DIR = "blobs"


class Store:
    """A store directory. ``Store.open(path)`` opens an existing one, ``Store.create(path)`` makes
    (or opens) one. Use as a context manager: DuckDB lets one process hold the file at a time."""

    def __init__(self, root: Path, log: EventLog, blobs: BlobStore) -> None:
        self.root = root
        self.log = log
        self.blobs = blobs

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, clock: Callable[[], datetime] = _utcnow) -> Store:
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        (root / BLOB_DIR).mkdir(exist_ok=True)
        return cls(root, DuckEventLog(root / LOG_FILE, create=True, clock=clock), BlobStore(root / BLOB_DIR))

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, read_only: bool = False, clock: Callable[[], datetime] = _utcnow
    ) -> Store:
        root = Path(path)
        if not (root / LOG_FILE).is_file():
            raise StoreNotFound(str(root))
        journal = root / (LOG_FILE + JOURNAL_SUFFIX)
        if read_only and journal.is_file() and journal.stat().st_size:
            # a writer stopped without closing: recover its journalled events first
            DuckEventLog(root / LOG_FILE, create=False, clock=clock).close()
        log = DuckEventLog(root / LOG_FILE, create=False, read_only=read_only, clock=clock)
        return cls(root, log, BlobStore(root / BLOB_DIR))

    def close(self) -> None:
        self.log.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
