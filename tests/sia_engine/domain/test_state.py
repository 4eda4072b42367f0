"""The reducer: pure, deterministic, chunk- and snapshot-invariant; contradictions are errors."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sia_engine.domain.canonical import canonical
from sia_engine.domain.events import (
    ActionTaken,
    AdapterCheckpointed,
    BranchForked,
    RolledBack,
    RunStarted,
    ScaffoldPatched,
    VersionAccepted,
    VersionEvaluated,
    VersionRejected,
    decode,
    encode,
)
from sia_engine.domain.scaffold import PatchOp, Scaffold, apply_patch, scaffold_hash
from sia_engine.domain.state import AgentState, apply, reduce, state_hash, version_id
from sia_engine.errors import ReducerError
from tests.strategies import BASE, histories


@given(events=histories(), cuts=st.lists(st.integers(0, 40), max_size=4))
def test_reduce_all_equals_reduce_in_chunks(events: list, cuts: list[int]) -> None:
    whole = reduce(events)
    points = sorted({min(c, len(events)) for c in cuts})
    state = None
    start = 0
    for p in [*points, len(events)]:
        state = reduce(events[start:p], state)
        start = p
    assert state == whole and state_hash(state) == state_hash(whole)


@given(events=histories(), at=st.integers(0, 40))
def test_reduce_from_snapshot_equals_reduce_all(events: list, at: int) -> None:
    at = min(at, len(events))
    snap = msgspec.json.decode(canonical(reduce(events[:at])), type=AgentState)
    assert state_hash(reduce(events[at:], snap)) == state_hash(reduce(events))


@given(events=histories())
def test_reduce_of_decoded_log_equals_live(events: list) -> None:
    replayed = [decode(n.kind, n.schema, n.payload) for n in map(encode, events)]
    assert state_hash(reduce(replayed)) == state_hash(reduce(events))


@given(events=histories(max_steps=15))
def test_apply_never_changes_its_input(events: list) -> None:
    state = AgentState()
    for e in events:
        before = state_hash(state)
        new = apply(state, e)
        assert state_hash(state) == before
        state = new
    assert state.n_events == len(events)


def _start() -> tuple[AgentState, str]:
    s = apply(AgentState(), RunStarted(run_id="r", task="t", seed=0, base_model=BASE, scaffold=Scaffold(), engine_version="0", levers=("scaffold",)))
    assert s.head is not None
    return s, s.head


def _patched(state: AgentState, head: str, prompt: str = "p") -> tuple[AgentState, str]:
    ops = (PatchOp("replace", "/system_prompt", prompt),)
    sc = apply_patch(state.versions[head].scaffold, ops)
    vid = version_id(BASE, sc, state.versions[head].adapter)
    return apply(state, ScaffoldPatched(parent_version=head, version_id=vid, ops=ops, scaffold_hash=scaffold_hash(sc))), vid


def test_lifecycle() -> None:
    s, v0 = _start()
    assert s.head_version is not None and s.head_version.lever == "initial" and s.head_version.status == "accepted"
    s, v1 = _patched(s, v0)
    assert s.versions[v1].status == "candidate" and s.versions[v1].parent == v0 and s.head == v0
    s = apply(s, VersionEvaluated(version_id=v1, split="val", score=0.7, n_episodes=3))
    s = apply(s, VersionAccepted(version_id=v1, previous=v0, score=0.7, previous_score=None, margin=0.0))
    assert s.head == v1 and s.versions[v1].score() == 0.7 and s.head_history == (v0, v1)
    blob = "b" * 64
    v2 = version_id(BASE, s.versions[v1].scaffold, blob)
    s = apply(s, AdapterCheckpointed(parent_version=v1, version_id=v2, blob=blob, peft_config={}, training_data=(), seed=1))
    assert s.versions[v2].adapter == blob and s.versions[v2].lever == "weights"
    s = apply(s, VersionRejected(version_id=v2, head=v1, score=0.1, head_score=0.7, reason="worse"))
    assert s.versions[v2].status == "rejected" and s.head == v1
    s = apply(s, RolledBack(to_version=v0, from_version=v1, reason="audit"))
    assert s.head == v0 and s.head_history == (v0, v1, v0)
    s = apply(s, BranchForked(source_branch="main", source_seq=3, source_event="c" * 64, reason="x"))
    assert s.forks == ("main#3",) and s.n_events == 8


def test_version_id_is_hash_of_base_scaffold_adapter() -> None:
    a = version_id(BASE, Scaffold(), None)
    assert a != version_id(BASE, Scaffold(), "b" * 64)
    assert a != version_id(BASE, Scaffold(system_prompt="x"), None)
    assert a != version_id(msgspec.structs.replace(BASE, revision="r2"), Scaffold(), None)
    assert a == version_id(BASE, Scaffold(), None)


def test_contradictions_are_reducer_errors() -> None:
    s, v0 = _start()
    other = "e" * 64
    cases = [
        (RunStarted(run_id="r2", task="t", seed=0, base_model=BASE, scaffold=Scaffold(), engine_version="0", levers=()), "the run 'r' has already started"),
        (ActionTaken(action_id="a", episode_id="e", version_id=other, actor="model", name="g"), f"version {other} is not in the history"),
        (VersionAccepted(version_id=v0, previous=v0, score=1, previous_score=None, margin=0), f"version {v0} is accepted, not a candidate"),
        (RolledBack(to_version=v0, from_version=v0, reason="x"), f"version {v0} is not an earlier accepted version"),
        (ScaffoldPatched(parent_version=v0, version_id=other, ops=(PatchOp("replace", "/nope", 1),), scaffold_hash=other), "scaffold patch op 0 rejected: replace /nope"),
        (ScaffoldPatched(parent_version=v0, version_id=other, ops=(PatchOp("replace", "/system_prompt", "x"),), scaffold_hash=other), "the patched scaffold hashes to"),
        (AdapterCheckpointed(parent_version=v0, version_id=other, blob=other, peft_config={}, training_data=(), seed=0, parent_adapter=other), f"parent_adapter is {other}, the parent version has None"),
        (AdapterCheckpointed(parent_version=v0, version_id=other, blob="b" * 64, peft_config={}, training_data=(), seed=0), f"version_id is {other} but base model, scaffold and adapter hash to"),
    ]
    for ev, fragment in cases:
        with pytest.raises(ReducerError) as exc:
            apply(s, ev)
        assert fragment in str(exc.value), str(exc.value)
    with pytest.raises(ReducerError) as exc:
        apply(AgentState(), ActionTaken(action_id="a", episode_id="e", version_id=other, actor="model", name="g"))
    assert str(exc.value) == "'action_taken' event contradicts the history: the history has not started: its first event must be 'run_started'"


def test_accept_needs_the_current_head_and_rejected_stays_rejected() -> None:
    s, v0 = _start()
    s, v1 = _patched(s, v0, "a")
    with pytest.raises(ReducerError, match="previous head is"):
        apply(s, VersionAccepted(version_id=v1, previous="f" * 64, score=1, previous_score=None, margin=0))
    s = apply(s, VersionRejected(version_id=v1, head=v0, score=0, head_score=None, reason="r"))
    with pytest.raises(ReducerError, match="is rejected, not a candidate"):
        apply(s, VersionAccepted(version_id=v1, previous=v0, score=1, previous_score=None, margin=0))
    with pytest.raises(ReducerError, match="already exists"):
        _patched(s, v0, "a")
