"""Errors raised by the persistence layer.

Tree::

    StoreError
    ├── StoreLocked          another process holds the DuckDB file
    ├── StoreNotFound        no store at the given path
    ├── StoreDamaged         the store's files are there but damaged (never treated as absent)
    │   └── JournalDamaged   a journal line that is not a batch this engine wrote (left as it is)
    ├── InvalidName          a branch name or event kind that the log does not accept
    ├── InvalidEnvelope      an event handed to append() is malformed (schema, payload)
    ├── BranchNotFound
    ├── BranchExists
    ├── EventNotFound
    ├── ConcurrencyError     append() was given an expected head that is not the head
    ├── ReadOnlyQuery        sql() was given a statement that could change the store
    ├── BlobError
    │   ├── InvalidBlobId
    │   ├── BlobNotFound
    │   └── BlobCorrupt
    └── IntegrityError       verify found a problem and the caller asked to raise

Every error carries structured fields and a message that says what happened, the offending
value, and what to do next.
"""

from __future__ import annotations

__all__ = [
    "StoreError",
    "StoreLocked",
    "StoreNotFound",
    "StoreFull",
    "StoreDamaged",
    "JournalDamaged",
    "InvalidName",
    "InvalidEnvelope",
    "BranchNotFound",
    "BranchExists",
    "EventNotFound",
    "ConcurrencyError",
    "ReadOnlyQuery",
    "BlobError",
    "InvalidBlobId",
    "BlobNotFound",
    "BlobCorrupt",
    "IntegrityError",
]


class StoreError(Exception):
    """Root of every error raised by ``store``."""


class StoreLocked(StoreError):
    def __init__(self, path: str, holder: str, *, same_process: bool = False) -> None:
        self.path = path
        self.holder = holder
        if same_process:
            msg = (
                f"store {path} is already open for writing in this process ({holder}); "
                f"use that log, or close it before opening the store again"
            )
        else:
            msg = (
                f"store {path} is locked by another process ({holder}); DuckDB lets one process "
                f"open a store at a time: stop that process, or work on a copy of the store"
            )
        super().__init__(msg)


class StoreNotFound(StoreError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"no store at {path}: create one with `sia init --store {path}`")


class StoreFull(StoreError):
    """The disk (or a quota) is full. Usually the write was refused whole: what was acknowledged
    before it is kept, nothing of it was recorded. With ``recorded`` the write itself was committed
    and only the heads file (a record of the heads, which may lag behind) could not be updated."""

    def __init__(self, path: str, detail: str, *, recorded: bool = False) -> None:
        self.path = path
        self.detail = detail
        self.recorded = recorded
        if recorded:
            super().__init__(f"disk full: store {path} recorded the write, but could not update its heads file ({detail}); "
                             "nothing is lost (the heads file may lag behind the log). Free space on its disk before going on: "
                             "a run resumes from what was recorded")
            return
        super().__init__(f"disk full: store {path} could not record the write ({detail}). Everything recorded before it is "
                         "kept and nothing of this write was recorded: free space on its disk and run the same command again")


class StoreDamaged(StoreError):
    """A file of the store is there but cannot be read as it should: ``what`` names the file,
    ``detail`` what was found. Nothing is repaired, truncated or recreated: the bytes are kept."""

    def __init__(self, path: str, what: str, detail: str) -> None:
        self.path = path
        self.what = what
        self.detail = detail
        super().__init__(
            f"store {path} is damaged: {what}: {detail}. Nothing was changed; keep its files as they are "
            f"(copy the folder aside for inspection) and restore the store from a backup"
        )


class JournalDamaged(StoreDamaged):
    """Line ``line`` of the journal at ``path`` is not a batch this engine wrote: ``detail`` says
    what is wrong with it. Nothing of the journal reached DuckDB and the file is left as it is."""

    def __init__(self, path: str, line: int, detail: str) -> None:
        self.line = line
        super().__init__(path, f"journal line {line}", f"{detail}; no line of the journal was moved into log.duckdb")


class InvalidName(StoreError):
    def __init__(self, what: str, value: object, rule: str) -> None:
        self.what = what
        self.value = value
        self.rule = rule
        super().__init__(f"invalid {what} {value!r}: {rule}")


class InvalidEnvelope(StoreError):
    def __init__(self, index: int | None, reason: str) -> None:
        self.index = index
        self.reason = reason
        where = "the batch" if index is None else f"event {index} of the batch"
        super().__init__(f"{where} was rejected: {reason}; nothing was written")


class BranchNotFound(StoreError):
    def __init__(self, name: str, existing: list[str]) -> None:
        self.name = name
        self.existing = existing
        known = ", ".join(existing) if existing else "none"
        super().__init__(
            f"branch {name!r} does not exist (existing: {known}); "
            f"create it with init_branch() or fork()"
        )


class BranchExists(StoreError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"branch {name!r} already exists; pick another name")


class EventNotFound(StoreError):
    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"no event {ref} in this log; list events with `sia log`")


class ConcurrencyError(StoreError):
    def __init__(self, branch: str, expected: str | None, actual: str | None) -> None:
        self.branch = branch
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"head of branch {branch!r} moved: expected {expected or 'an empty history'}, "
            f"found {actual or 'an empty history'}; nothing was appended: re-read the branch "
            f"and retry against its current head"
        )


class ReadOnlyQuery(StoreError):
    def __init__(self, statement: str, kind: str) -> None:
        self.statement = statement
        self.kind = kind
        super().__init__(
            f"only read-only SELECT queries are allowed, got a {kind} statement: {statement[:80]!r}"
        )


class BlobError(StoreError):
    """Root of blob store errors."""


class InvalidBlobId(BlobError):
    def __init__(self, blob_id: object) -> None:
        self.blob_id = blob_id
        super().__init__(f"invalid blob id {blob_id!r}: expected 64 lowercase hex characters (a sha256)")


class BlobNotFound(BlobError):
    def __init__(self, blob_id: str, path: str) -> None:
        self.blob_id = blob_id
        self.path = path
        super().__init__(f"blob {blob_id} is not in the store (looked in {path})")


class BlobCorrupt(BlobError):
    def __init__(self, blob_id: str, got: str, path: str) -> None:
        self.expected = blob_id
        self.got = got
        self.path = path
        super().__init__(
            f"blob {path} is corrupt: its bytes hash to {got}, expected {blob_id}; "
            f"restore it from a backup (the log still names the right hash)"
        )


class IntegrityError(StoreError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
