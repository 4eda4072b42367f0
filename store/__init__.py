"""Persistence for sia-engine: an append-only, hash-chained event log and content-addressed blobs.

This package knows envelopes and bytes only; it imports nothing else of the project.
"""

from store.blobs import BlobStore
from store.duck import DuckEventLog
from store.envelope import (
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
    ReadOnlyQuery,
    StoreError,
    StoreLocked,
    StoreNotFound,
)
from store.layout import Store
from store.memory import MemoryEventLog
from store.protocol import EventLog

__all__ = [
    "BlobCorrupt",
    "BlobError",
    "BlobNotFound",
    "BlobStore",
    "BranchExists",
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
    "Store",
    "StoreError",
    "StoreLocked",
    "StoreNotFound",
    "VerifyReport",
    "event_id",
]
