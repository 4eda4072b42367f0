"""Events: round trips for every kind, typed errors for anything else."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sia_engine.domain.events import (
    EVENT_TYPES,
    Event,
    VersionEvaluated,
    decode,
    encode,
)
from sia_engine.errors import (
    EventError,
    InvalidEvent,
    InvalidPayload,
    UnknownEventKind,
    UnknownSchema,
)
from tests.strategies import events_of

KINDS = sorted(EVENT_TYPES)


def test_every_kind_has_a_stable_tag() -> None:
    assert KINDS == sorted(
        [
            "run_started", "iteration_started", "action_taken", "trajectory_recorded", "feedback_verdict", "scaffold_patched",
            "adapter_checkpointed", "version_evaluated", "version_accepted", "version_rejected",
            "rolled_back", "branch_forked", "run_configured", "baseline_scored",
        ]
    )
    assert {k: cls.SCHEMA for k, cls in EVENT_TYPES.items() if cls.SCHEMA != 1} == {"feedback_verdict": 2, "run_started": 2}


def test_a_run_started_before_pinning_reads_as_unpinned() -> None:
    from sia_engine.domain.events import RunStarted, decode, encode

    v1 = (b'{"kind":"run_started","run_id":"r","task":"arith","seed":0,"base_model":{"id":"m"},"scaffold":{},'
          b'"engine_version":"0","levers":["scaffold"]}')
    ev = decode("run_started", 1, v1)
    assert isinstance(ev, RunStarted) and ev.data is None and ev.environment is None
    new = encode(ev)
    assert new.schema == 2 and b'"data":null' in new.payload and b'"environment":null' in new.payload


def test_old_schemas_are_upcast_on_read() -> None:
    from sia_engine.domain.events import FeedbackVerdict, decode
    from sia_engine.errors import UnknownSchema

    v1 = (b'{"kind":"feedback_verdict","version_id":"' + b"a" * 64 + b'","lever":"weights","rationale":"r","policy":"rule",'
          b'"training_plan":{"trajectory_ids":["t1"],"method":"gold"}}')
    ev = decode("feedback_verdict", 1, v1)
    assert isinstance(ev, FeedbackVerdict) and ev.training_plan is not None and ev.training_plan.recipe == "sft"
    rs = decode("feedback_verdict", 1, v1.replace(b'"gold"', b'"rejection_sampling"'))
    assert rs.training_plan.recipe == "rft"  # type: ignore[attr-defined]
    none = decode("feedback_verdict", 1, v1.replace(b',"training_plan":{"trajectory_ids":["t1"],"method":"gold"}', b""))
    assert none.training_plan is None  # type: ignore[attr-defined]
    with pytest.raises(UnknownSchema, match="has schema 3"):
        decode("feedback_verdict", 3, v1)
    with pytest.raises(UnknownSchema, match="has schema 0"):
        decode("feedback_verdict", 0, v1)


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_round_trip(kind: str, data: st.DataObject) -> None:
    event = data.draw(events_of(EVENT_TYPES[kind]))
    new = encode(event)
    assert new.kind == kind and new.schema == EVENT_TYPES[kind].SCHEMA
    back = decode(new.kind, new.schema, new.payload)
    assert back == event
    assert encode(back).payload == new.payload  # canonical: one byte string per event


@pytest.mark.parametrize("kind", KINDS)
@given(blob=st.binary(max_size=200))
def test_random_bytes_give_only_typed_errors(kind: str, blob: bytes) -> None:
    try:
        decode(kind, 1, blob)
    except EventError:
        pass


@given(kind=st.text(max_size=20), schema=st.integers(), blob=st.binary(max_size=50))
def test_random_envelopes_give_only_typed_errors(kind: str, schema: int, blob: bytes) -> None:
    try:
        decode(kind, schema, blob)
    except EventError:
        pass


def test_unknown_kind() -> None:
    with pytest.raises(UnknownEventKind) as exc:
        decode("model_exploded", 1, b"{}", where="main#3 (abc)")
    assert str(exc.value).startswith("unknown event kind 'model_exploded' at main#3 (abc); this engine knows: action_taken, ")
    assert str(exc.value).endswith("The log was written by another engine version: open it with that version")


def test_unknown_schema() -> None:
    with pytest.raises(UnknownSchema) as exc:
        decode("version_evaluated", 2, b"{}")
    assert str(exc.value) == (
        "event kind 'version_evaluated' has schema 2, this engine reads schema 1; "
        "open the log with the engine version that wrote it"
    )


def test_invalid_payload_names_the_path() -> None:
    payload = b'{"version_id":"' + b"a" * 64 + b'","split":"validation","score":1,"n_episodes":1}'
    with pytest.raises(InvalidPayload) as exc:
        decode("version_evaluated", 1, payload, where="main#7 (x)")
    assert exc.value.path == "$.split"
    assert str(exc.value) == "invalid 'version_evaluated' payload at main#7 (x): Invalid enum value 'validation' (at $.split)"
    with pytest.raises(InvalidPayload, match=r"Object missing required field `score` \(at \$\)"):
        decode("version_evaluated", 1, b'{"version_id":"' + b"a" * 64 + b'","split":"val","n_episodes":1}')
    with pytest.raises(InvalidPayload, match=r"unknown field `extra`"):
        decode("version_evaluated", 1, b'{"version_id":"' + b"a" * 64 + b'","split":"val","score":1,"n_episodes":1,"extra":1}')
    with pytest.raises(InvalidPayload, match=r"not valid JSON"):
        decode("version_evaluated", 1, b"{")
    with pytest.raises(InvalidPayload, match=r"Invalid value 'rolled_back' \(at \$.kind\)"):
        decode("version_evaluated", 1, b'{"kind":"rolled_back"}')


def test_unencodable_events_are_refused() -> None:
    good = dict(version_id="a" * 64, split="val", n_episodes=1)
    with pytest.raises(InvalidEvent) as exc:
        encode(VersionEvaluated(score=float("nan"), **good))
    assert str(exc.value) == (
        "cannot record 'version_evaluated' event: Expected `float`, got `null` (at $.score); non-finite floats are not allowed"
    )
    with pytest.raises(InvalidEvent, match="has no JSON form"):
        encode(VersionEvaluated(score=1.0, metrics={"x": object()}, **good))  # type: ignore[dict-item]
    with pytest.raises(InvalidEvent, match="Expected `str` matching regex"):
        encode(VersionEvaluated(score=1.0, **{**good, "version_id": "short"}))

    class NotAnEvent(msgspec.Struct):
        x: int

    with pytest.raises(InvalidEvent, match="not an event type of this engine"):
        encode(NotAnEvent(x=1))  # type: ignore[arg-type]


def test_payload_carries_the_kind_and_is_canonical() -> None:
    ev = VersionEvaluated(version_id="a" * 64, split="val", score=0.5, n_episodes=2, metrics={"b": 1.0, "a": 2.0})
    # struct fields in declaration order, dict keys sorted
    assert encode(ev).payload == (
        b'{"kind":"version_evaluated","version_id":"' + b"a" * 64
        + b'","split":"val","score":0.5,"n_episodes":2,"metrics":{"a":2.0,"b":1.0},"protocol":{}}'
    )


def test_event_base_is_abstract_in_practice() -> None:
    assert Event not in EVENT_TYPES.values()
