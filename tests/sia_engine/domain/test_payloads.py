"""The typed records inside events encode to the very bytes the loose dicts they replaced did, so
every event recorded before them keeps its id and decodes to the same value."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from sia_engine.domain.canonical import canonical
from sia_engine.domain.events import ActionTaken, BranchForked, FeedbackVerdict, InvalidPayload, encode
from sia_engine.domain.payloads import ArmOverrides, Budget, ChoiceStage, GenerateInputs, Message, ModelChoice, ToolCall
from sia_engine.domain.scaffold import Decoding

VID = "ab" * 32

# the shapes the model Feedback Agent wrote as dicts (sia_engine/feedback_llm.py before the types)
LOCAL_ROWS = [{"label": "the scaffold", "logprob": -3.5, "prior": -4.0, "tokens": 3, "score": 0.1667},
              {"label": "the weights", "logprob": -2.0, "prior": -2.5, "tokens": 2, "score": 0.25}]
ENDPOINT_ROWS = [{"label": "sft", "score": -1.5}, {"label": "rft", "score": -0.5}]
OLD_CHOICE: dict[str, Any] = {
    "stages": [
        {"stage": "lever", "options": LOCAL_ROWS, "method": "calibrated", "chosen": 1, "chosen_label": "the weights",
         "tied": [1], "preferred": None, "excluded": []},
        {"stage": "recipe", "options": ENDPOINT_ROWS, "method": "endpoint", "chosen": 1, "chosen_label": "rft",
         "tied": [0, 1], "preferred": 0, "excluded": [0], "free_text": {"valid": False, "why": "names no trajectory"}},
    ],
    "tie_rule": "prefer the rule policy's option",
    "rule_verdict": "weights",
}


def test_a_model_choice_encodes_as_the_dict_it_replaced() -> None:
    typed = msgspec.convert(OLD_CHOICE, ModelChoice)
    assert canonical(typed) == canonical(OLD_CHOICE)
    assert typed.stages[1].free_text is not None and not typed.stages[1].free_text.valid
    assert typed.stages[0].options[0].prior == -4.0 and typed.stages[1].options[0].logprob is None


class OldVerdict(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="feedback_verdict"):
    """``FeedbackVerdict`` as it was before the types: ``choice`` a dict."""

    version_id: str
    lever: str
    rationale: str
    policy: str
    evidence: tuple[str, ...] = ()
    patch: tuple[Any, ...] = ()
    training_plan: Any = None
    valid: bool = True
    raw: str | None = None
    choice: dict[str, Any] = {}


def test_a_verdict_with_a_choice_and_one_without_keep_their_bytes() -> None:
    """The bytes the dict-choice verdict was recorded with decode, and encode back to the same
    bytes (so to the same event id)."""
    for choice in (OLD_CHOICE, {}):
        old = canonical(OldVerdict(version_id=VID, lever="weights", rationale="r", policy="llm", choice=choice))
        verdict = msgspec.json.decode(old, type=FeedbackVerdict)
        assert isinstance(verdict.choice, ModelChoice) and bool(verdict.choice) == bool(choice)
        assert encode(verdict).payload == old


def test_an_unknown_field_in_a_choice_is_refused() -> None:
    bad = {**OLD_CHOICE, "stages": [{**OLD_CHOICE["stages"][0], "secret": 1}]}
    with pytest.raises(msgspec.ValidationError, match="secret"):
        msgspec.convert(bad, ModelChoice)


def _generate(n: int, sample: int | None, prefix: str = "") -> dict[str, Any]:
    inputs = GenerateInputs(messages=(Message("user", "2+2?"),), decoding=Decoding(), seed=7, prefix=prefix,
                            n=n if n > 1 else None, sample=sample if n > 1 else None)
    return msgspec.to_builtins(inputs)


def test_generate_inputs_are_the_dict_the_loop_built() -> None:
    dec = msgspec.to_builtins(Decoding())
    msgs = [{"role": "user", "content": "2+2?"}]
    # the loop's dict: prefix only when there was one, n and sample only for a group of samples
    assert canonical(_generate(1, None)) == canonical({"messages": msgs, "decoding": dec, "seed": 7})
    assert canonical(_generate(4, 0, "{")) == canonical({"messages": msgs, "decoding": dec, "seed": 7, "prefix": "{", "n": 4, "sample": 0})
    assert canonical(_generate(4, 3)) == canonical({"messages": msgs, "decoding": dec, "seed": 7, "n": 4, "sample": 3})
    action = ActionTaken(action_id="a", episode_id="e", version_id=VID, actor="model", name="generate", inputs=_generate(4, 3))
    assert action.is_generation and action.generate_inputs().sample_seed == 10


def test_a_generate_action_whose_inputs_are_not_a_request_is_a_typed_error() -> None:
    action = ActionTaken(action_id="a9", episode_id="e", version_id=VID, actor="model", name="generate",
                         inputs={"messages": "not a list", "decoding": {}, "seed": 1})
    with pytest.raises(InvalidPayload, match="a9"):
        action.generate_inputs()


def test_a_tool_call_is_recorded_as_its_own_action() -> None:
    call = ToolCall(name="sandbox", inputs={"config": {"k": 15}}, outputs={"status": "ok"})
    assert msgspec.to_builtins(call) == {"name": "sandbox", "inputs": {"config": {"k": 15}}, "outputs": {"status": "ok"}}
    assert ToolCall() == ToolCall(name="tool", inputs={}, outputs={})


def test_an_experiment_fork_says_its_arm_and_a_plain_fork_says_none() -> None:
    overrides = {"experiment": "x1", "arm": "both", "seed": 3, "levers": ["scaffold", "weights"], "iterations": 2,
                 "budget": {"model_calls": 40, "wall_s": 60.0}}
    fork = BranchForked(source_branch="main", source_seq=4, source_event=VID, reason="r", overrides=overrides)
    arm = fork.arm()
    assert arm == ArmOverrides(experiment="x1", arm="both", seed=3, levers=("scaffold", "weights"), iterations=2,
                               budget=Budget(model_calls=40, wall_s=60.0))
    assert canonical(msgspec.to_builtins(arm)) == canonical(overrides)  # what the fork records (a dict) is what the Struct gives
    assert BranchForked(source_branch="main", source_seq=4, source_event=VID, reason="what if").arm() is None
    broken = BranchForked(source_branch="main", source_seq=4, source_event=VID, reason="r", overrides={"experiment": "x1"})
    with pytest.raises(InvalidPayload, match="overrides"):
        broken.arm()


def test_a_stage_is_read_by_attribute() -> None:
    stage = msgspec.convert(OLD_CHOICE["stages"][1], ChoiceStage)
    assert (stage.stage, stage.chosen, stage.tied, stage.preferred, stage.excluded) == ("recipe", 1, (0, 1), 0, (0,))
