"""Whole-store verification: the log's hash chain, every event against its schema and the
reducer, every referenced blob, every blob's bytes, and every cached snapshot."""

from __future__ import annotations

import msgspec

from sia_engine.domain.events import decode_envelope
from sia_engine.domain.history import DELTA_KEY, SNAPSHOT_KEY, load_cached_state
from sia_engine.domain.state import AgentState, apply, state_hash
from sia_engine.errors import EventError, ReducerError
from store import BlobStore, EventLog, Problem, VerifyReport

__all__ = ["IntegrityReport", "verify_store", "Problem"]



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


def _domain_problems(log: EventLog, blobs: BlobStore | None) -> tuple[list[Problem], int]:
    """Decode and reduce every branch from its fork point; check blob refs and snapshots."""
    problems: list[Problem] = []
    snaps: dict[tuple[str, int], list[str]] = {}
    for cache_key in (SNAPSHOT_KEY, DELTA_KEY):
        for b, s, _ in log.list_snapshots(cache_key):
            snaps.setdefault((b, s), []).append(cache_key)
    at_fork: dict[tuple[str, int], AgentState | None] = {}
    bases: dict[tuple[str, int, str], AgentState | None] = {}  # full snapshots decoded once for all their deltas
    branches = log.branches()
    for info in branches:
        if info.base_branch is not None:
            assert info.base_seq is not None
            at_fork[(info.base_branch, info.base_seq)] = None
    for info in branches:
        state: AgentState | None = AgentState()
        if info.base_branch is not None:
            assert info.base_seq is not None
            state = at_fork.get((info.base_branch, info.base_seq))
            if state is None:  # the ancestry is broken; its own branch reported why
                continue
        for env in log.read(info.name, after_seq=-1):
            try:
                ev = decode_envelope(env)
                state = apply(state if state is not None else AgentState(), ev)
            except (EventError, ReducerError) as e:
                problems.append(Problem(env.branch, env.seq, env.id, str(e)))
                break
            for blob_id in ev.blob_refs() if blobs is not None else ():
                if blobs is not None and not blobs.exists(blob_id):
                    problems.append(Problem(env.branch, env.seq, env.id, f"references blob {blob_id}, which is not in the store"))
            key = (env.branch, env.seq)
            if key in at_fork:
                at_fork[key] = state
            for snap_key in snaps.get(key, []):
                what = "cached snapshot" if snap_key == SNAPSHOT_KEY else "cached delta snapshot"
                try:
                    found = load_cached_state(log, env.branch, env.seq, snap_key, bases)
                except msgspec.MsgspecError:
                    found = None
                if found is None:
                    problems.append(Problem(env.branch, env.seq, env.id, f"{what} is unreadable (its file is missing or altered, "
                                            "or its base is gone): drop the cache with `sia snapshots --clear`"))
                    continue
                cached, fresh = state_hash(found), state_hash(state)
                if cached != fresh:
                    problems.append(
                        Problem(env.branch, env.seq, env.id, f"{what} has state hash {cached}, a fresh reduce gives {fresh}")
                    )
    return problems, sum(len(v) for v in snaps.values())


def verify_store(log: EventLog, blobs: BlobStore | None = None) -> IntegrityReport:
    """Everything ``verify`` can check; ``first`` names the first problem. Without ``blobs``,
    blob references and blob bytes are not checked."""
    report: VerifyReport = log.verify()
    problems = list(report.problems)
    n_snapshots = 0
    if report.ok:  # decoding a chain that does not verify would only repeat its problems
        domain, n_snapshots = _domain_problems(log, blobs)
        problems += domain
    n_blobs = 0
    if blobs is not None:
        n_blobs = len(blobs.ids())
        problems += [Problem("blobs", None, blob_id, msg) for blob_id, msg in blobs.verify()]
    return IntegrityReport(report.n_events, report.n_branches, n_blobs, n_snapshots, tuple(problems))
