"""Persistence for sia-engine: an append-only, hash-chained event log and content-addressed blobs.

This package knows envelopes and bytes only; it imports nothing else of the project. Envelopes,
errors and the ``EventLog`` protocol load at once; the backends (DuckDB, blobs with safetensors
and numpy, the in-memory log) load on first use, so that importing the domain's events or
reducer pulls in no database (PEP 562 ``__getattr__``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from store.envelope import (
    BranchImport,
    BranchInfo,
    Envelope,
    NewEvent,
    Problem,
    VerifyReport,
    event_id,
)
from store.errors import (
    BlobCorrupt,
    BlobError,
    BlobNotFound,
    BranchExists,
    BranchNotFound,
    ConcurrencyError,
    EventNotFound,
    IntegrityError,
    InvalidBlobId,
    InvalidEnvelope,
    InvalidName,
    JournalDamaged,
    ReadOnlyQuery,
    StoreDamaged,
    StoreError,
    StoreFull,
    StoreLocked,
    StoreNotFound,
)
from store.protocol import EventLog, RunsSql

if TYPE_CHECKING:
    from store.blobs import BlobStore
    from store.duck import DuckEventLog
    from store.layout import Store
    from store.memory import MemoryEventLog

_LAZY = {"BlobStore": "store.blobs", "DuckEventLog": "store.duck", "Store": "store.layout", "MemoryEventLog": "store.memory"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'store' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__all__ = [
    "BlobCorrupt",
    "BlobError",
    "BlobNotFound",
    "BlobStore",
    "BranchExists",
    "BranchImport",
    "BranchInfo",
    "BranchNotFound",
    "ConcurrencyError",
    "DuckEventLog",
    "Envelope",
    "EventLog",
    "EventNotFound",
    "IntegrityError",
    "InvalidBlobId",
    "InvalidEnvelope",
    "InvalidName",
    "MemoryEventLog",
    "NewEvent",
    "Problem",
    "ReadOnlyQuery",
    "RunsSql",
    "Store",
    "StoreError",
    "StoreLocked",
    "StoreDamaged",
    "JournalDamaged",
    "StoreNotFound",
    "StoreFull",
    "VerifyReport",
    "event_id",
]
