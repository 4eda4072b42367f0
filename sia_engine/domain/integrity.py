"""Whole-store verification: the log's hash chain, every event against its schema and the
reducer, every referenced blob, every blob's bytes, and every cached snapshot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from sia_engine.domain.events import decode_envelope
from sia_engine.domain.history import DELTA_KEY, SNAPSHOT_KEY, load_cached_state
from sia_engine.domain.projection import Recorded
from sia_engine.domain.state import AgentState, apply, state_hash
from sia_engine.errors import EventError, ReducerError
from store import BlobStore, Envelope, EventLog, Problem, VerifyReport

__all__ = ["IntegrityReport", "verify_store", "check_store", "Problem"]


class IntegrityReport(msgspec.Struct, frozen=True):
    n_events: int
    n_branches: int
    n_blobs: int
    n_snapshots: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None


def _snapshots(log: EventLog) -> dict[tuple[str, int], list[str]]:
    snaps: dict[tuple[str, int], list[str]] = {}
    for cache_key in (SNAPSHOT_KEY, DELTA_KEY):
        for b, s, _ in log.list_snapshots(cache_key):
            snaps.setdefault((b, s), []).append(cache_key)
    return snaps


def _snapshot_problems(log: EventLog, env: Envelope, keys: list[str], state: AgentState,
                       bases: dict[tuple[str, int, str], AgentState | None]) -> list[Problem]:
    """What is wrong with the snapshots cached at ``env`` (``state``: a fresh reduce up to it)."""
    problems = []
    for snap_key in keys:
        what = "cached snapshot" if snap_key == SNAPSHOT_KEY else "cached delta snapshot"
        try:
            found = load_cached_state(log, env.branch, env.seq, snap_key, bases)
        except msgspec.MsgspecError:
            found = None
        if found is None:
            problems.append(Problem(env.branch, env.seq, env.id, f"{what} is unreadable (its file is missing or altered, "
                                    "or its base is gone): drop the cache with `sia snapshots --clear`"))
        elif (cached := state_hash(found)) != (fresh := state_hash(state)):
            problems.append(Problem(env.branch, env.seq, env.id, f"{what} has state hash {cached}, a fresh reduce gives {fresh}"))
    return problems


def _domain_problems(log: EventLog, blobs: BlobStore | None, own: Mapping[str, Sequence[Envelope]]
                     ) -> tuple[list[Problem], int, dict[str, list[Recorded]]]:
    """Decode and reduce every branch from its fork point; check blob refs and snapshots. Also
    returns each branch's own events decoded (those before a problem)."""
    problems: list[Problem] = []
    snaps = _snapshots(log)
    bases: dict[tuple[str, int, str], AgentState | None] = {}  # full snapshots decoded once for all their deltas
    branches = log.branches()
    at_fork: dict[tuple[str, int], AgentState | None] = {(i.base_branch, i.base_seq): None for i in branches
                                                         if i.base_branch is not None and i.base_seq is not None}
    decoded: dict[str, list[Recorded]] = {}
    for info in branches:
        state: AgentState | None = AgentState()
        if info.base_branch is not None:
            assert info.base_seq is not None
            state = at_fork.get((info.base_branch, info.base_seq))
            if state is None:  # the ancestry is broken; its own branch reported why
                continue
        recs = decoded[info.name] = []
        envs = own[info.name] if info.name in own else log.read(info.name, after_seq=-1)
        for env in envs:
            try:
                ev = decode_envelope(env)
                state = apply(state if state is not None else AgentState(), ev)
            except (EventError, ReducerError) as e:
                problems.append(Problem(env.branch, env.seq, env.id, str(e)))
                break
            recs.append(Recorded(env.branch, env.seq, env.recorded_at, ev, env.id))
            for blob_id in ev.blob_refs() if blobs is not None else ():
                if blobs is not None and not blobs.exists(blob_id):
                    problems.append(Problem(env.branch, env.seq, env.id, f"references blob {blob_id}, which is not in the store"))
            if (key := (env.branch, env.seq)) in at_fork:
                at_fork[key] = state
            problems += _snapshot_problems(log, env, snaps.get(key, []), state, bases)
    return problems, sum(len(v) for v in snaps.values()), decoded


def verify_store(log: EventLog, blobs: BlobStore | None = None) -> IntegrityReport:
    """Everything ``verify`` can check; ``first`` names the first problem. Without ``blobs``,
    blob references and blob bytes are not checked."""
    return check_store(log, blobs)[0]


def check_store(log: EventLog, blobs: BlobStore | None = None, own: Mapping[str, Sequence[Envelope]] | None = None
                ) -> tuple[IntegrityReport, dict[str, list[Recorded]]]:
    """``verify_store``'s report, and every branch's own events decoded on the way (empty when
    the chain does not verify): a report that checks the store and then reads it decodes each
    branch once. ``own``: each branch's own envelopes, already read (else they are read here)."""
    report: VerifyReport = log.verify()
    problems = list(report.problems)
    n_snapshots = 0
    decoded: dict[str, list[Recorded]] = {}
    if report.ok:  # decoding a chain that does not verify would only repeat its problems
        domain, n_snapshots, decoded = _domain_problems(log, blobs, own or {})
        problems += domain
    n_blobs = 0
    if blobs is not None:
        n_blobs = len(blobs.ids())
        problems += [Problem("blobs", None, blob_id, msg) for blob_id, msg in blobs.verify()]
    return IntegrityReport(report.n_events, report.n_branches, n_blobs, n_snapshots, tuple(problems)), decoded
