"""``Store``: one directory holding the event log (``log.duckdb``) and its blobs (``blobs/``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from store.blobs import BlobStore
from store.duck import HEADS_SUFFIX, JOURNAL_SUFFIX, SNAPSHOT_SUFFIX, DuckEventLog, utcnow
from store.errors import StoreDamaged, StoreNotFound
from store.protocol import EventLog

__all__ = ["Store", "LOG_FILE", "BLOB_DIR"]

LOG_FILE = "log.duckdb"
BLOB_DIR = "blobs"


class Store:
    """A store directory. ``Store.open(path)`` opens an existing one, ``Store.create(path)`` makes
    (or opens) one. Use as a context manager: DuckDB lets one process hold the file at a time."""

    def __init__(self, root: Path, log: EventLog, blobs: BlobStore, *, scratch: Path | None = None, journal_events: int = 0) -> None:
        self.root = root
        self.log = log
        self.blobs = blobs
        self._scratch = scratch  # a read-only open's private copy of the log (removed on close)
        # events a writer journalled but never moved into log.duckdb (read-only opens see them
        # through a private copy; the next read-write open moves them in)
        self.journal_events = journal_events

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, clock: Callable[[], datetime] = utcnow) -> Store:
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        (root / BLOB_DIR).mkdir(exist_ok=True)
        return cls(root, DuckEventLog(root / LOG_FILE, create=True, clock=clock), BlobStore(root / BLOB_DIR))

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, read_only: bool = False, clock: Callable[[], datetime] = utcnow
    ) -> Store:
        root = Path(path)
        if not (root / LOG_FILE).is_file():
            raise StoreNotFound(str(root))
        journal = root / (LOG_FILE + JOURNAL_SUFFIX)
        if read_only and journal.is_file() and journal.stat().st_size:
            return cls._open_copy(root, clock)
        log = DuckEventLog(root / LOG_FILE, create=False, read_only=read_only, clock=clock)
        return cls(root, log, BlobStore(root / BLOB_DIR))

    @classmethod
    def _open_copy(cls, root: Path, clock: Callable[[], datetime]) -> Store:
        """A writer stopped without closing and left journalled events. Read-only means read-only:
        the log, its WAL and the journal are copied to a private folder, the journal is replayed
        (checked as a read-write open would) into the copy, and the copy is opened read-only. The
        store's own files stay byte-identical."""
        from store.journal import Journal

        scratch = Path(tempfile.mkdtemp(prefix="sia-readonly-"))
        try:
            for name in (LOG_FILE, LOG_FILE + ".wal", LOG_FILE + JOURNAL_SUFFIX, LOG_FILE + HEADS_SUFFIX):
                if (root / name).is_file():
                    shutil.copy2(root / name, scratch / name)
            pending = sum(len(b.ids) for b in Journal(str(scratch / (LOG_FILE + JOURNAL_SUFFIX))).read())
            DuckEventLog(scratch / LOG_FILE, create=False, clock=clock).close()
            log = DuckEventLog(
                scratch / LOG_FILE, create=False, read_only=True, clock=clock, snapshot_dir=root / (LOG_FILE + SNAPSHOT_SUFFIX)
            )
        except StoreDamaged as e:  # said of the store, not of its private copy
            shutil.rmtree(scratch, ignore_errors=True)
            raise StoreDamaged(str(root / LOG_FILE), e.what, e.detail.replace(str(scratch), str(root))) from None
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return cls(root, log, BlobStore(root / BLOB_DIR), scratch=scratch, journal_events=pending)

    def close(self) -> None:
        self.log.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
