"""Event envelopes: what the log stores for every event, and how an event's id is computed.

The store knows nothing of what an event means. It keeps an envelope per event: the kind and
schema version the domain gave it, canonical payload bytes (UTF-8 JSON), and the position of
the event in its history. The id chains every event to its parent, as in git::

    id = sha256(parent || "\\n" || branch || "\\n" || kind || "\\n" || schema || "\\n" || payload)

``parent`` is the hex id of the previous event in the history ("" for a genesis), ``schema`` is
written in decimal. Branch and kind may not contain a newline, so the encoding is unambiguous.
The branch is hashed so that two branches recording identical events after the same fork
point never share an id. ``recorded_at`` is informational and not hashed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from datetime import datetime

import msgspec

from store.errors import InvalidEnvelope, InvalidName, StoreError

__all__ = [
    "BranchImport",
    "NewEvent",
    "Envelope",
    "BranchInfo",
    "Problem",
    "VerifyReport",
    "event_id",
    "history_segments",
    "check_branch_name",
    "check_kind",
    "Sealed",
    "seal",
]

# segments of letters, digits and ._- (each starting with a letter or digit) joined by single "/":
# no empty, "." or ".." segment, no leading or trailing "/" (a name is never a path that climbs)
_BRANCH_RE = re.compile(r"(?=.{1,128}\Z)[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*")
_KIND_RE = re.compile(r"[a-z][a-z0-9_.]{0,63}")
MAX_SCHEMA = 2**31 - 1


class NewEvent(msgspec.Struct, frozen=True):
    """An event handed to ``append``: kind, schema version and canonical JSON payload bytes."""

    kind: str
    schema: int
    payload: bytes


class Envelope(msgspec.Struct, frozen=True):
    """A stored event."""

    id: str
    parent: str | None
    branch: str
    seq: int
    kind: str
    schema: int
    recorded_at: datetime
    payload: bytes

    @property
    def ref(self) -> str:
        """``branch#seq``, the event's position."""
        return f"{self.branch}#{self.seq}"


class BranchInfo(msgspec.Struct, frozen=True):
    """A branch ref. A root branch has no base; a fork's base is the event it grew from."""

    name: str
    base_branch: str | None
    base_seq: int | None
    base_id: str | None
    head_seq: int  # seq of the branch's own last event, -1 when it has none yet
    head_id: str | None  # id of the last event of the whole history (the base id for a fresh fork)
    created_at: datetime


class BranchImport(msgspec.Struct, frozen=True):
    """What ``EventLog.import_branches`` adds for one branch: the ref to create first (``create``:
    its base branch, seq and id; None when the branch exists), then ``events`` chained after
    ``expected_head`` (the branch's head id now, or the base id for a new fork, None for a new root)."""

    name: str
    expected_head: str | None
    events: tuple[NewEvent, ...]
    create: BranchInfo | None = None
    # what ``seal(name, expected_head, events)`` returned, where the caller sealed them already to
    # check their ids (a bundle's pull): the log then writes it instead of sealing them again
    sealed: Sealed | None = None


class Problem(msgspec.Struct, frozen=True):
    """One integrity problem found by ``verify``."""

    branch: str
    seq: int | None
    event_id: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.branch}#{self.seq}" if self.seq is not None else f"branch {self.branch}"
        ident = f" ({self.event_id})" if self.event_id else ""
        return f"{where}{ident}: {self.reason}"


class VerifyReport(msgspec.Struct, frozen=True):
    n_events: int
    n_branches: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None


def history_segments(lookup: Callable[[str], BranchInfo], branch: str, until_seq: int | None) -> list[tuple[str, int]]:
    """(branch, last seq) for each stretch of the history of ``branch#until_seq`` (its head when
    None), oldest first: the fork ancestry, then the branch itself."""
    info = lookup(branch)
    segs: list[tuple[str, int]] = [(branch, info.head_seq if until_seq is None else until_seq)]
    seen = {branch}
    while info.base_branch is not None:
        assert info.base_seq is not None
        if info.base_branch in seen:  # refs never form a cycle unless someone rewrote them
            raise StoreError(f"the refs of branch {branch!r} form a cycle through {info.base_branch!r}: the store was altered")
        seen.add(info.base_branch)
        segs.append((info.base_branch, info.base_seq))
        info = lookup(info.base_branch)
    return segs[::-1]


def event_id(parent: str | None, branch: str, kind: str, schema: int, payload: bytes) -> str:
    h = hashlib.sha256(f"{parent or ''}\n{branch}\n{kind}\n{schema}\n".encode())
    h.update(payload)
    return h.hexdigest()


def check_branch_name(name: object) -> str:
    if not isinstance(name, str) or not _BRANCH_RE.fullmatch(name):
        raise InvalidName(
            "branch name",
            name,
            "use 1-128 characters: letters, digits and ._- in parts joined by single '/', each part starting with a "
            "letter or digit (e.g. main, exp-both-s0, team/try.2)",
        )
    return name


def check_kind(kind: object) -> str:
    if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind):
        raise InvalidName(
            "event kind", kind, "use 1-64 characters of lowercase letters, digits, _ and ., starting with a letter"
        )
    return kind


_RAW = msgspec.json.Decoder(msgspec.Raw)


class Sealed(msgspec.Struct):
    """A validated batch with its chained ids, ready to be written."""

    ids: list[str]
    kinds: list[str]
    schemas: list[int]
    payloads: list[str]


def seal(branch: str, parent: str | None, events: Sequence[NewEvent], *, decoded: bool = False) -> Sealed:
    """Validate a batch and chain its ids after ``parent``; raises ``InvalidEnvelope``. With
    ``decoded`` the caller has decoded every payload as JSON already (a bundle's pull decodes each
    as its event), so only UTF-8 is checked here, not the JSON again."""
    if isinstance(events, (NewEvent, bytes, str)) or not isinstance(events, Sequence):
        raise InvalidEnvelope(None, f"events must be a sequence of NewEvent, got {type(events).__name__}")
    ids: list[str] = []
    kinds: list[str] = []
    schemas: list[int] = []
    payloads: list[str] = []
    seen_kinds: set[str] = set()
    sha = hashlib.sha256
    prefix = f"\n{branch}\n"
    for i, ev in enumerate(events):
        if type(ev) is not NewEvent:
            raise InvalidEnvelope(i, f"expected a NewEvent, got {type(ev).__name__}")
        kind, schema, payload = ev.kind, ev.schema, ev.payload
        if kind not in seen_kinds:
            try:
                check_kind(kind)
            except InvalidName as e:
                raise InvalidEnvelope(i, str(e)) from None
            seen_kinds.add(kind)
        if type(schema) is not int or not 1 <= schema <= MAX_SCHEMA:
            raise InvalidEnvelope(i, f"schema must be an int in 1..{MAX_SCHEMA}, got {schema!r}")
        if type(payload) is not bytes:
            raise InvalidEnvelope(i, f"payload must be bytes of UTF-8 JSON, got {type(payload).__name__}")
        try:
            text = payload.decode()
            if not decoded:
                _RAW.decode(payload)
        except (UnicodeDecodeError, msgspec.DecodeError) as e:
            raise InvalidEnvelope(i, f"payload is not UTF-8 JSON ({e})") from None
        except RecursionError:
            raise InvalidEnvelope(i, "payload is nested too deeply to decode (more than about 1,000 levels)") from None
        h = sha(f"{parent or ''}{prefix}{kind}\n{schema}\n".encode())
        h.update(payload)
        parent = h.hexdigest()
        ids.append(parent)
        kinds.append(kind)
        schemas.append(schema)
        payloads.append(text)
    if not ids:
        raise InvalidEnvelope(None, "it is empty")
    return Sealed(ids, kinds, schemas, payloads)
