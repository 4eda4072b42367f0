"""Rebuild state at any point of any branch, and resolve the references users type."""

from __future__ import annotations

import re

import msgspec

from sia_engine.domain.history import rebuild
from sia_engine.domain.state import AgentState, Version
from store import Envelope, EventLog, EventNotFound, StoreError

__all__ = ["Located", "locate", "state_at", "AmbiguousRef"]


class AmbiguousRef(StoreError):
    def __init__(self, ref: str, matches: list[str]) -> None:
        self.ref = ref
        self.matches = matches
        super().__init__(f"{ref!r} matches more than one {', '.join(matches)}: type more characters")


class Located(msgspec.Struct, frozen=True):
    """What a reference names: an event, or a version found in a branch's state."""

    event: Envelope | None = None
    version: Version | None = None
    branch: str | None = None


def state_at(log: EventLog, branch: str, seq: int | None = None) -> AgentState:
    """The agent state after ``branch#seq`` (the branch head when None), snapshots used."""
    return rebuild(log, branch, until_seq=seq)[0]


def locate(log: EventLog, ref: str, *, branch: str = "main") -> Located:
    """Resolve ``ref``: ``branch#seq``, an event id or unique prefix (>= 6 hex), or a version id or
    unique prefix in the state of ``branch``. Raises ``EventNotFound`` or ``AmbiguousRef``."""
    if "#" in ref:
        b, _, seq = ref.rpartition("#")
        if not re.fullmatch(r"[0-9]{1,18}", seq):  # ASCII digits only: str.isdigit takes '²' and '٣' too
            raise EventNotFound(ref)
        return Located(event=log.at(b, int(seq)), branch=b)
    ref = ref.lower()
    if len(ref) < 6:
        raise EventNotFound(f"{ref} (give at least 6 characters of an id)")
    events = log.find(ref, limit=2)
    state = state_at(log, branch)
    versions = [v for vid, v in state.versions.items() if vid.startswith(ref)]
    hits = [f"event {e.id}" for e in events] + [f"version {v.version_id}" for v in versions]
    if len(hits) > 1:
        raise AmbiguousRef(ref, hits)
    if events:
        return Located(event=events[0], branch=events[0].branch)
    if versions:
        return Located(version=versions[0], branch=branch)
    raise EventNotFound(f"{ref} (no event id, and no version in branch {branch!r})")
