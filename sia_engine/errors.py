"""Errors raised by the engine (domain and loop).

Tree::

    SiaError
    ├── EventError
    │   ├── UnknownEventKind     a log holds a kind this engine does not know
    │   ├── UnknownSchema        a kind at a schema version this engine does not know
    │   ├── InvalidPayload       payload bytes that do not decode into the kind's fields
    │   └── InvalidEvent         an event object that cannot be encoded
    ├── InvalidPatch             a scaffold patch that does not apply (never half-applied)
    ├── ReducerError            an event that contradicts the history before it
    ├── SnapshotMismatch        a cached snapshot that differs from a fresh reduce
    └── MissingBlob             an event names a blob the store does not hold

Store errors (``store.errors.StoreError``) pass through unchanged.
"""

from __future__ import annotations

__all__ = [
    "SiaError",
    "EventError",
    "UnknownEventKind",
    "UnknownSchema",
    "InvalidPayload",
    "InvalidEvent",
    "InvalidPatch",
    "ReducerError",
    "SnapshotMismatch",
    "MissingBlob",
]


class SiaError(Exception):
    """Root of every error raised by ``sia_engine``."""


class EventError(SiaError):
    """Root of event encoding/decoding errors."""


def _at(where: str | None) -> str:
    return f" at {where}" if where else ""


class UnknownEventKind(EventError):
    def __init__(self, kind: str, known: list[str], where: str | None = None) -> None:
        self.kind = kind
        self.where = where
        super().__init__(
            f"unknown event kind {kind!r}{_at(where)}; this engine knows: {', '.join(known)}. "
            f"The log was written by another engine version: open it with that version"
        )


class UnknownSchema(EventError):
    def __init__(self, kind: str, schema: int, known: int, where: str | None = None) -> None:
        self.kind = kind
        self.schema = schema
        self.known = known
        self.where = where
        super().__init__(
            f"event kind {kind!r} has schema {schema}{_at(where)}, this engine reads schema {known}; "
            f"open the log with the engine version that wrote it"
        )


class InvalidPayload(EventError):
    def __init__(self, kind: str, path: str, reason: str, where: str | None = None) -> None:
        self.kind = kind
        self.path = path
        self.reason = reason
        self.where = where
        super().__init__(f"invalid {kind!r} payload{_at(where)}: {reason} (at {path})")


class InvalidEvent(EventError):
    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(f"cannot record {kind!r} event: {reason}")


class InvalidPatch(SiaError):
    def __init__(self, index: int | None, reason: str) -> None:
        self.index = index
        self.reason = reason
        where = "scaffold patch" if index is None else f"scaffold patch op {index}"
        super().__init__(f"{where} rejected: {reason}; the scaffold is unchanged")


class ReducerError(SiaError):
    def __init__(self, kind: str, reason: str, where: str | None = None) -> None:
        self.kind = kind
        self.reason = reason
        self.where = where
        super().__init__(f"{kind!r} event{_at(where)} contradicts the history: {reason}")


class SnapshotMismatch(SiaError):
    def __init__(self, ref: str, cached: str, fresh: str) -> None:
        self.ref = ref
        self.cached = cached
        self.fresh = fresh
        super().__init__(
            f"snapshot at {ref} has state hash {cached} but a fresh reduce gives {fresh}; "
            f"the cache is stale or corrupt: drop it with `sia snapshots --clear`"
        )


class MissingBlob(SiaError):
    def __init__(self, blob_id: str, kind: str) -> None:
        self.blob_id = blob_id
        self.kind = kind
        super().__init__(
            f"{kind!r} event names blob {blob_id}, which is not in the store; put the blob first "
            f"(a blob must be durable before the event that references it)"
        )
