"""``AgentState`` and the reducer: a pure function from events to the agent's state.

Same events, same state, same ``state_hash``, on any machine: the reducer reads no files, clock,
randomness or network. An agent version is (base model, scaffold, adapter blob or none) and its
``version_id`` is the hash of those three. An event that contradicts the history before it is a
``ReducerError``; the recorder applies every event before appending it, so such events never
reach the log.

``AgentState`` is immutable: ``apply`` returns a new state and never changes its input (the
``versions`` mapping is copied on write; treat it as read-only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import msgspec

from sia_engine.domain.canonical import digest
from sia_engine.domain.events import (
    ActionTaken,
    AdapterCheckpointed,
    BaselineScored,
    BranchForked,
    Event,
    FeedbackVerdict,
    IterationStarted,
    ModelRef,
    RolledBack,
    RunConfigured,
    RunStarted,
    ScaffoldPatched,
    TrajectoryRecorded,
    VersionAccepted,
    VersionEvaluated,
    VersionRejected,
)
from sia_engine.domain.payloads import DataPin, Environment
from sia_engine.domain.scaffold import Scaffold, apply_patch, scaffold_hash
from sia_engine.errors import InvalidPatch, ReducerError

__all__ = ["Evaluation", "Version", "RunInfo", "AgentState", "apply", "reduce", "version_id", "state_hash", "REDUCER_VERSION"]

# Bump when the reducer's output changes for the same events: snapshots are keyed by it.
REDUCER_VERSION = "2"

Phase = Literal["idle", "started", "decided", "candidate", "evaluated"]


class Evaluation(msgspec.Struct, frozen=True):
    split: str
    score: float
    n_episodes: int


class Version(msgspec.Struct, frozen=True):
    version_id: str
    index: int  # creation order within the history
    parent: str | None
    lever: Literal["initial", "scaffold", "weights"]
    scaffold: Scaffold
    adapter: str | None
    status: Literal["candidate", "accepted", "rejected"]
    evaluations: tuple[Evaluation, ...] = ()

    def score(self, split: str = "val") -> float | None:
        """The latest evaluation score on ``split``, or None."""
        for ev in reversed(self.evaluations):
            if ev.split == split:
                return ev.score
        return None


class RunInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    run_id: str
    task: str
    seed: int
    base_model: ModelRef
    engine_version: str
    levers: tuple[str, ...]
    config: dict[str, Any]
    data: DataPin | None = None  # None: recorded before data was pinned (run_started schema 1)
    environment: Environment | None = None


class AgentState(msgspec.Struct, frozen=True):
    run: RunInfo | None = None
    head: str | None = None
    versions: dict[str, Version] = {}
    head_history: tuple[str, ...] = ()  # every version that became head, in order
    forks: tuple[str, ...] = ()  # "branch#seq" of each fork point in the history
    n_events: int = 0
    n_actions: int = 0
    n_trajectories: int = 0
    n_verdicts: int = 0
    # Where the improvement loop stands, so that a resumed run continues at the right step:
    # idle -> started (iteration_started) -> decided (a valid verdict for a lever) -> candidate
    # (scaffold_patched / adapter_checkpointed) -> evaluated -> idle (accepted / rejected).
    iteration: int = -1
    phase: Phase = "idle"
    pending: FeedbackVerdict | None = None
    candidate: str | None = None

    @property
    def head_version(self) -> Version | None:
        return None if self.head is None else self.versions[self.head]

    def ordered_versions(self) -> list[Version]:
        return sorted(self.versions.values(), key=lambda v: v.index)


def version_id(base_model: ModelRef, scaffold: Scaffold, adapter: str | None) -> str:
    return digest({"base_model": base_model, "scaffold": scaffold_hash(scaffold), "adapter": adapter})


def state_hash(state: AgentState) -> str:
    return digest(state)


def _version(state: AgentState, vid: str, kind: str) -> Version:
    v = state.versions.get(vid)
    if v is None:
        raise ReducerError(kind, f"version {vid} is not in the history")
    return v


def _started(state: AgentState, kind: str) -> RunInfo:
    if state.run is None:
        raise ReducerError(kind, "the history has not started: its first event must be 'run_started'")
    return state.run


def _with_version(state: AgentState, v: Version, **changes: Any) -> AgentState:
    return msgspec.structs.replace(state, versions={**state.versions, v.version_id: v}, **changes)


def _new_candidate(state: AgentState, kind: str, vid: str, parent: Version, lever: Literal["scaffold", "weights"], scaffold: Scaffold, adapter: str | None) -> AgentState:
    run = _started(state, kind)
    if vid in state.versions:
        raise ReducerError(kind, f"version {vid} already exists")
    expected = version_id(run.base_model, scaffold, adapter)
    if expected != vid:
        raise ReducerError(kind, f"version_id is {vid} but base model, scaffold and adapter hash to {expected}")
    v = Version(vid, len(state.versions), parent.version_id, lever, scaffold, adapter, "candidate")
    if state.phase == "decided":
        return _with_version(state, v, phase="candidate", candidate=vid)
    return _with_version(state, v)


def _run_started(state: AgentState, e: RunStarted) -> AgentState:
    if state.run is not None:
        raise ReducerError(e.kind(), f"the run {state.run.run_id!r} has already started")
    run = RunInfo(e.run_id, e.task, e.seed, e.base_model, e.engine_version, tuple(e.levers), e.config, e.data, e.environment)
    vid = version_id(e.base_model, e.scaffold, None)
    v = Version(vid, 0, None, "initial", e.scaffold, None, "accepted")
    return msgspec.structs.replace(state, run=run, head=vid, versions={vid: v}, head_history=(vid,))


def _action(state: AgentState, e: ActionTaken) -> AgentState:
    _started(state, e.kind())
    if e.version_id not in state.versions:
        _version(state, e.version_id, e.kind())
    return msgspec.structs.replace(state, n_actions=state.n_actions + 1)


def _trajectory(state: AgentState, e: TrajectoryRecorded) -> AgentState:
    _started(state, e.kind())
    if e.version_id not in state.versions:
        _version(state, e.version_id, e.kind())
    return msgspec.structs.replace(state, n_trajectories=state.n_trajectories + 1)


def _iteration(state: AgentState, e: IterationStarted) -> AgentState:
    _started(state, e.kind())
    if state.phase != "idle":
        raise ReducerError(e.kind(), f"iteration {state.iteration} is still open (phase {state.phase!r})")
    if e.iteration != state.iteration + 1:
        raise ReducerError(e.kind(), f"iteration is {e.iteration}, the next iteration is {state.iteration + 1}")
    if e.head_version != state.head:
        raise ReducerError(e.kind(), f"head_version is {e.head_version}, the head is {state.head}")
    return msgspec.structs.replace(state, iteration=e.iteration, phase="started")


def _verdict(state: AgentState, e: FeedbackVerdict) -> AgentState:
    _started(state, e.kind())
    _version(state, e.version_id, e.kind())
    new = msgspec.structs.replace(state, n_verdicts=state.n_verdicts + 1)
    if state.phase == "started" and e.valid:
        if e.lever == "none":
            return msgspec.structs.replace(new, phase="idle")
        return msgspec.structs.replace(new, phase="decided", pending=e)
    return new


def _scaffold_patched(state: AgentState, e: ScaffoldPatched) -> AgentState:
    parent = _version(state, e.parent_version, e.kind())
    try:
        scaffold = apply_patch(parent.scaffold, e.ops)
    except InvalidPatch as err:
        raise ReducerError(e.kind(), str(err)) from None
    got = scaffold_hash(scaffold)
    if got != e.scaffold_hash:
        raise ReducerError(e.kind(), f"the patched scaffold hashes to {got}, the event says {e.scaffold_hash}")
    return _new_candidate(state, e.kind(), e.version_id, parent, "scaffold", scaffold, parent.adapter)


def _adapter(state: AgentState, e: AdapterCheckpointed) -> AgentState:
    parent = _version(state, e.parent_version, e.kind())
    if e.parent_adapter != parent.adapter:
        raise ReducerError(e.kind(), f"parent_adapter is {e.parent_adapter}, the parent version has {parent.adapter}")
    return _new_candidate(state, e.kind(), e.version_id, parent, "weights", parent.scaffold, e.blob)


def _evaluated(state: AgentState, e: VersionEvaluated) -> AgentState:
    v = _version(state, e.version_id, e.kind())
    v = msgspec.structs.replace(v, evaluations=(*v.evaluations, Evaluation(e.split, e.score, e.n_episodes)))
    if state.phase == "candidate" and e.version_id == state.candidate:
        return _with_version(state, v, phase="evaluated")
    return _with_version(state, v)


def _candidate(state: AgentState, vid: str, kind: str) -> Version:
    v = _version(state, vid, kind)
    if v.status != "candidate":
        raise ReducerError(kind, f"version {vid} is {v.status}, not a candidate")
    return v


def _accepted(state: AgentState, e: VersionAccepted) -> AgentState:
    v = _candidate(state, e.version_id, e.kind())
    if e.previous != state.head:
        raise ReducerError(e.kind(), f"previous head is {e.previous}, the head is {state.head}")
    v = msgspec.structs.replace(v, status="accepted")
    return _with_version(state, v, head=v.version_id, head_history=(*state.head_history, v.version_id), **_close(state, v))


def _rejected(state: AgentState, e: VersionRejected) -> AgentState:
    v = _candidate(state, e.version_id, e.kind())
    if e.head != state.head:
        raise ReducerError(e.kind(), f"head is {e.head} in the event, {state.head} in the history")
    return _with_version(state, msgspec.structs.replace(v, status="rejected"), **_close(state, v))


def _close(state: AgentState, v: Version) -> dict[str, Any]:
    """Deciding on the iteration's candidate closes the iteration."""
    if state.candidate == v.version_id:
        return {"phase": "idle", "pending": None, "candidate": None}
    return {}


def _rolled_back(state: AgentState, e: RolledBack) -> AgentState:
    _started(state, e.kind())
    if state.phase != "idle":
        raise ReducerError(e.kind(), f"iteration {state.iteration} is open (phase {state.phase!r}): roll back between iterations")
    if e.from_version != state.head:
        raise ReducerError(e.kind(), f"from_version is {e.from_version}, the head is {state.head}")
    to = _version(state, e.to_version, e.kind())
    if to.status != "accepted" or to.version_id == state.head:
        raise ReducerError(e.kind(), f"version {e.to_version} is not an earlier accepted version")
    return msgspec.structs.replace(state, head=to.version_id, head_history=(*state.head_history, to.version_id))


def _configured(state: AgentState, e: RunConfigured) -> AgentState:
    run = _started(state, e.kind())
    if state.phase != "idle":
        raise ReducerError(e.kind(), f"iteration {state.iteration} is open (phase {state.phase!r}): settings change between iterations")
    return msgspec.structs.replace(state, run=msgspec.structs.replace(run, config=dict(e.config), levers=tuple(e.levers)))


def _forked(state: AgentState, e: BranchForked) -> AgentState:
    _started(state, e.kind())
    return msgspec.structs.replace(state, forks=(*state.forks, f"{e.source_branch}#{e.source_seq}"))


def _baseline(state: AgentState, e: BaselineScored) -> AgentState:
    """A baseline's score is a record beside the agent: it changes no version and no head."""
    _started(state, e.kind())
    if state.phase != "idle":
        raise ReducerError(e.kind(), f"iteration {state.iteration} is open (phase {state.phase!r}): score baselines between iterations")
    return state


_HANDLERS: dict[type[Event], Callable[[AgentState, Any], AgentState]] = {
    RunStarted: _run_started,
    IterationStarted: _iteration,
    ActionTaken: _action,
    TrajectoryRecorded: _trajectory,
    FeedbackVerdict: _verdict,
    ScaffoldPatched: _scaffold_patched,
    AdapterCheckpointed: _adapter,
    VersionEvaluated: _evaluated,
    VersionAccepted: _accepted,
    VersionRejected: _rejected,
    RolledBack: _rolled_back,
    BranchForked: _forked,
    RunConfigured: _configured,
    BaselineScored: _baseline,
}


def apply(state: AgentState, event: Event) -> AgentState:
    """The state after ``event``; raises ``ReducerError`` if it contradicts ``state``."""
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise ReducerError(type(event).__name__, "no reducer rule for this event type")
    new = handler(state, event)
    return msgspec.structs.replace(new, n_events=state.n_events + 1)


def reduce(events: Iterable[Event], state: AgentState | None = None) -> AgentState:
    """Fold ``events`` into ``state`` (a fresh state when None)."""
    s = AgentState() if state is None else state
    for e in events:
        s = apply(s, e)
    return s
