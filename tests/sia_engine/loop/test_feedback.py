"""The Feedback Agent's rule policy (the model policy: test_feedback_llm.py)."""

from __future__ import annotations

from sia_engine.domain.events import ModelRef, RunStarted, TrajectoryRecorded
from sia_engine.domain.state import AgentState, apply
from sia_engine.loop.feedback.rule import Context, RulePolicy
from tests.loop_helpers import TASK

BASE = ModelRef(id="scripted/x")


def ctx(outputs: list[str], levers: tuple[str, ...] = ("scaffold", "weights"), state: AgentState | None = None) -> Context:
    s = state or apply(AgentState(), RunStarted(run_id="r", task="arith", seed=0, base_model=BASE, scaffold=TASK.scaffold(), engine_version="0", levers=("scaffold", "weights")))
    head = s.head_version
    assert head is not None
    eps = TASK.episodes("train")[: len(outputs)]
    trajs = tuple(
        TrajectoryRecorded(trajectory_id=f"t{i}", episode_id=e.id, split="train", version_id=head.version_id, output=o, score=TASK.score(e, o).score)
        for i, (e, o) in enumerate(zip(eps, outputs))
    )
    failures = {t.trajectory_id: TASK.score(e, t.output).failure for t, e in zip(trajs, eps)}
    return Context(s, head, trajs, failures, levers, 0)


def golds(n: int) -> list[str]:
    return [e.gold or "" for e in TASK.episodes("train")[:n]]


def test_format_failures_patch_the_scaffold() -> None:
    outs = [f"It is {g}." for g in golds(8)]
    [v] = RulePolicy().decide(ctx(outs), TASK).verdicts
    assert v.lever == "scaffold" and v.patch[0].path == "/output_format" and v.patch[0].value == TASK.format_hint
    assert v.rationale == "format or abstention failures: 8 format, 0 abstention, 0 content errors in 8 outputs"
    assert v.evidence == tuple(f"t{i}" for i in range(8))


def test_content_errors_with_gold_answers_train_sft_on_the_wrong_ones() -> None:
    outs = golds(4) + [str(int(g) + 1) for g in golds(8)[4:]]
    [v] = RulePolicy().decide(ctx(outs), TASK).verdicts
    assert v.lever == "weights" and v.training_plan is not None
    assert v.training_plan.recipe == "sft" and v.training_plan.trajectory_ids == ("t4", "t5", "t6", "t7")
    assert "sft on the gold answers" in v.rationale


def test_nothing_right_trains_on_gold_answers() -> None:
    outs = [str(int(g) + 1) for g in golds(6)]
    [v] = RulePolicy().decide(ctx(outs), TASK).verdicts
    assert v.lever == "weights" and v.training_plan is not None and v.training_plan.method == "gold"
    assert v.training_plan.effective_recipe == "sft"


def test_scaffold_only_adds_a_worked_example_for_content_errors() -> None:
    outs = [str(int(g) + 1) for g in golds(6)]
    [v] = RulePolicy().decide(ctx(outs, levers=("scaffold",)), TASK).verdicts
    assert v.lever == "scaffold" and v.patch[0].op == "add" and v.patch[0].path == "/examples/-"
    assert v.patch[0].value == {"input": TASK.episodes("train")[0].input, "output": golds(1)[0]}


def test_no_errors_no_lever() -> None:
    [v] = RulePolicy().decide(ctx(golds(5)), TASK).verdicts
    assert v.lever == "none" and v.rationale.startswith("no errors")


def test_two_rejected_weights_candidates_turn_back_to_the_scaffold() -> None:
    from sia_engine.domain.events import AdapterCheckpointed, VersionRejected
    from sia_engine.domain.state import version_id

    s = apply(AgentState(), RunStarted(run_id="r", task="arith", seed=0, base_model=BASE, scaffold=TASK.scaffold(), engine_version="0", levers=("scaffold", "weights")))
    head = s.head_version
    assert head is not None
    for i in range(2):
        blob = f"{i + 1:064x}"
        vid = version_id(BASE, head.scaffold, blob)
        s = apply(s, AdapterCheckpointed(parent_version=head.version_id, version_id=vid, blob=blob, peft_config={}, training_data=(), seed=i))
        s = apply(s, VersionRejected(version_id=vid, head=head.version_id, score=0.0, head_score=0.1, reason="worse"))
    outs = golds(4) + [str(int(g) + 1) for g in golds(8)[4:]]
    [v] = RulePolicy().decide(ctx(outs, state=s), TASK).verdicts
    assert v.lever == "scaffold" and v.patch[0].path == "/examples/-"


