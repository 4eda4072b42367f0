"""Hypothesis strategies derived from msgspec type information, and valid random histories."""

from __future__ import annotations

import re
from typing import Any

import msgspec.inspect as mi
from hypothesis import strategies as st

from sia_engine.domain.events import (
    ActionTaken,
    AdapterCheckpointed,
    Event,
    FeedbackVerdict,
    ModelRef,
    RolledBack,
    RunStarted,
    ScaffoldPatched,
    TrajectoryRecorded,
    VersionAccepted,
    VersionEvaluated,
    VersionRejected,
)
from sia_engine.domain.scaffold import PatchOp, Scaffold, apply_patch, scaffold_hash
from sia_engine.domain.state import AgentState, apply, version_id

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


def _bounded_int(i: mi.IntType) -> st.SearchStrategy[int]:
    lo, hi = -(2**63), 2**63 - 1
    if i.ge is not None:
        lo = i.ge
    if i.gt is not None:
        lo = i.gt + 1
    if i.le is not None:
        hi = i.le
    if i.lt is not None:
        hi = i.lt - 1
    return st.integers(lo, hi)


def from_info(t: mi.Type) -> st.SearchStrategy[Any]:
    if isinstance(t, mi.StrType):
        if t.pattern:
            return st.from_regex(re.compile(t.pattern), fullmatch=True)
        return st.text(min_size=t.min_length or 0, max_size=min(t.max_length or 12, 12))
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.IntType):
        return _bounded_int(t)
    if isinstance(t, mi.FloatType):
        return st.floats(
            min_value=t.ge if t.ge is not None else t.gt,
            max_value=t.le if t.le is not None else t.lt,
            exclude_min=t.gt is not None,
            exclude_max=t.lt is not None,
            allow_nan=False,
            allow_infinity=False,
        )
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.UnionType):
        return st.one_of([from_info(x) for x in t.types])
    if isinstance(t, mi.VarTupleType):
        return st.lists(from_info(t.item_type), max_size=3).map(tuple)
    if isinstance(t, mi.ListType):
        return st.lists(from_info(t.item_type), max_size=3)
    if isinstance(t, mi.DictType):
        return st.dictionaries(from_info(t.key_type), from_info(t.value_type), max_size=3)
    if isinstance(t, mi.AnyType):
        return json_values
    if isinstance(t, mi.StructType):
        required = {f.name: from_info(f.type) for f in t.fields if f.required}
        optional = {f.name: from_info(f.type) for f in t.fields if not f.required}
        return st.fixed_dictionaries(required, optional=optional).map(lambda kw: t.cls(**kw))
    raise NotImplementedError(f"no strategy for {t!r}")


def events_of(cls: type[Event]) -> st.SearchStrategy[Event]:
    return from_info(mi.type_info(cls))


BASE = ModelRef(id="test/base", revision="r1", weights_hash="0" * 64)


@st.composite
def histories(draw: st.DrawFn, max_steps: int = 30) -> list[Event]:
    """A valid history: a run start, then random steps that the reducer accepts."""
    scaffold = Scaffold(system_prompt=draw(st.text(max_size=10)))
    events: list[Event] = [
        RunStarted(run_id="r", task="t", seed=draw(st.integers(0, 9)), base_model=BASE, scaffold=scaffold, engine_version="0", levers=("scaffold", "weights"))
    ]
    state = apply(AgentState(), events[0])
    n = 0
    for _ in range(draw(st.integers(0, max_steps))):
        n += 1
        head = state.head_version
        assert head is not None
        candidates = [v for v in state.versions.values() if v.status == "candidate"]
        accepted = [v for v in state.versions.values() if v.status == "accepted" and v.version_id != state.head]
        step = draw(st.sampled_from(["traj", "action", "verdict", "patch", "adapter", "eval", "decide", "rollback"]))
        ev: Event | None = None
        if step == "traj":
            ev = TrajectoryRecorded(trajectory_id=f"t{n}", episode_id=f"e{n}", split="train", version_id=head.version_id, output=draw(st.text(max_size=6)), score=draw(st.none() | st.floats(0, 1)))
        elif step == "action":
            ev = ActionTaken(action_id=f"a{n}", episode_id=f"e{n}", version_id=head.version_id, actor="model", name="generate", inputs={"p": draw(json_values)})
        elif step == "verdict":
            ev = FeedbackVerdict(version_id=head.version_id, lever=draw(st.sampled_from(["scaffold", "weights", "none"])), rationale="r", policy="rule")
        elif step == "patch":
            ops = (PatchOp("replace", "/system_prompt", f"prompt {n}"),)
            new = apply_patch(head.scaffold, ops)
            ev = ScaffoldPatched(parent_version=head.version_id, version_id=version_id(BASE, new, head.adapter), ops=ops, scaffold_hash=scaffold_hash(new))
        elif step == "adapter":
            blob = f"{n:064x}"
            ev = AdapterCheckpointed(parent_version=head.version_id, version_id=version_id(BASE, head.scaffold, blob), blob=blob, peft_config={"r": 4}, training_data=(), seed=n, parent_adapter=head.adapter)
        elif step == "eval":
            v = draw(st.sampled_from(list(state.versions.values())))
            ev = VersionEvaluated(version_id=v.version_id, split="val", score=draw(st.floats(0, 1)), n_episodes=4)
        elif step == "decide" and candidates:
            v = draw(st.sampled_from(candidates))
            if draw(st.booleans()):
                ev = VersionAccepted(version_id=v.version_id, previous=head.version_id, score=0.5, previous_score=None, margin=0.0)
            else:
                ev = VersionRejected(version_id=v.version_id, head=head.version_id, score=0.1, head_score=None, reason="worse")
        elif step == "rollback" and accepted:
            v = draw(st.sampled_from(accepted))
            ev = RolledBack(to_version=v.version_id, from_version=head.version_id, reason="test")
        if ev is None:
            continue
        if isinstance(ev, (ScaffoldPatched, AdapterCheckpointed)) and ev.version_id in state.versions:
            continue
        state = apply(state, ev)
        events.append(ev)
    return events
