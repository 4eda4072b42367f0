"""The constrained model Feedback Agent (issue 12): every verdict valid with no fallback, choices
by the model's own log-likelihood over a closed set of options, a deterministic and recorded tie
rule, free text prefilled and validated, everything replayable from the log."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import msgspec
import pytest

from sia_engine.domain.events import FeedbackVerdict, decode_envelope
from sia_engine.domain.payloads import FreeText
from sia_engine.loop.feedback.model import (
    LEVER_LABELS,
    TIE_RULE,
    LLMPolicy,
    iteration_options,
    pick,
)
from sia_engine.loop.feedback.rule import RulePolicy

SCAFFOLD, WEIGHTS, NONE = LEVER_LABELS["scaffold"], LEVER_LABELS["weights"], LEVER_LABELS["none"]
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.models.protocol import Message, ScriptedModel
from store import Store
from tests.loop_helpers import TASK, scripted, sometimes_wrong
from tests.sia_engine.loop.test_feedback import ctx, golds


def verdicts(s: Store, branch: str = "main") -> list[FeedbackVerdict]:
    out = [decode_envelope(e) for e in s.log.read(branch, kinds=["feedback_verdict"])]
    assert all(isinstance(v, FeedbackVerdict) for v in out)
    return out  # type: ignore[return-value]


def test_pick_takes_the_best_and_breaks_ties_by_the_recorded_rule() -> None:
    assert pick([-1.0, -0.5, -2.0], None) == (1, [1])
    assert pick([-1.0, -1.0, -2.0], None) == (0, [0, 1])  # the first of the equal best
    assert pick([-1.0, -1.0, -2.0], 1) == (1, [0, 1])  # the rule policy's, when among them
    assert pick([-1.0, -1.0, -2.0], 2) == (0, [0, 1])  # not among them: the first


def test_options_are_a_closed_set_of_valid_verdicts() -> None:
    c = ctx([f"It is {g}." for g in golds(8)])  # format failures: scaffold changes apply; sft has nothing (no content error)
    rule = RulePolicy()
    options = iteration_options(c, TASK, rule)
    levers, changes = [o.label for o in options["lever"]], options["change"]
    assert levers[0] == SCAFFOLD and levers[-1] == NONE
    # arith decodes greedily already: no temperature option; the gold answers of failed episodes as examples
    assert [o.label for o in changes][:2] == ["state the answer format the task expects",
                                              "add a worked example with the gold answer of a failed training episode"]
    assert changes[-1].free_text and all(o.lever == "scaffold" for o in changes)
    wrong = ctx(golds(4) + [str(int(g) + 1) for g in golds(8)[4:]])
    recipes = iteration_options(wrong, TASK, rule)["recipe"]
    assert [o.label.split(":")[0] for o in recipes] == ["sft", "rft"]  # grpo: one sample per episode, nothing to compare
    assert recipes[0].plan is not None and recipes[0].plan.trajectory_ids == ("t4", "t5", "t6", "t7")
    only = iteration_options(ctx(golds(4), levers=("scaffold",)), TASK, rule)["lever"]
    assert WEIGHTS not in [o.label for o in only] and [o.lever for o in only] == ["scaffold", "none"]


def test_all_equal_scores_are_decided_by_the_tie_rule_and_recorded() -> None:
    c = ctx([f"It is {g}." for g in golds(8)])
    d = LLMPolicy(ScriptedModel(lambda r, a: "", name="flat")).decide(c, TASK)  # no loglik: every option scores 0
    [v] = d.verdicts
    [rule] = RulePolicy().decide(c, TASK).verdicts
    assert v.valid and v.policy == "llm" and v.lever == rule.lever == "scaffold" and v.patch == rule.patch
    first = v.choice.stages[0]
    assert v.choice.tie_rule == TIE_RULE and first.tied == tuple(range(len(first.options)))
    assert first.chosen == first.preferred and all(o.score == 0.0 for o in first.options)
    assert [a.name for a in d.actions] == ["feedback-score", "feedback-score"]


def test_the_model_s_likelihood_decides_against_the_rules() -> None:
    c = ctx([f"It is {g}." for g in golds(8)])
    prefers_none = ScriptedModel(lambda r, a: "", name="n", loglik=lambda m, o, a: 0.0 if o == NONE else -3.0)
    [v] = LLMPolicy(prefers_none, calibrate=False).decide(c, TASK).verdicts
    assert v.valid and v.lever == "none" and v.choice.rule_verdict == "scaffold"
    example = "add a worked example with the gold answer of a failed training episode"
    shows = ScriptedModel(lambda r, a: "", name="g", loglik=lambda m, o, a: 0.0 if o in (SCAFFOLD, example) else -1.0)
    [w] = LLMPolicy(shows, calibrate=False).decide(c, TASK).verdicts
    assert w.lever == "scaffold" and w.patch[0].path == "/examples/-" and w.patch[0].value["output"] == golds(1)[0]


def test_calibration_scores_what_the_iteration_adds_not_the_words_alone() -> None:
    c = ctx([f"It is {g}." for g in golds(8)])

    def loglik(m: tuple[Message, ...], o: str, a: str | None) -> float:
        prior = {SCAFFOLD: -1.0, WEIGHTS: -4.0, NONE: -6.0}.get(o, -5.0)  # the prompt change is likely whatever the iteration says
        evidence = 2.5 if o == NONE and "Iteration" in m[-1].content else 0.0
        return prior + evidence

    judge = ScriptedModel(lambda r, a: "", name="c", loglik=loglik)
    [raw] = LLMPolicy(judge, calibrate=False).decide(c, TASK).verdicts
    [cal] = LLMPolicy(judge).decide(c, TASK).verdicts
    assert raw.lever == "scaffold" and cal.lever == "none"
    row = {o.label: o for o in cal.choice.stages[0].options}
    assert row[NONE].prior == -6.0 * 3 and row[NONE].score == 2.5 and row[SCAFFOLD].score == 0.0


def test_a_new_system_prompt_is_prefilled_and_validated() -> None:
    c = ctx([f"It is {g}." for g in golds(8)])

    def wants_prompt(m: tuple[Message, ...], o: str, a: str | None) -> float:
        return 0.0 if o in (SCAFFOLD, "write a new system prompt") else -5.0 + (1.0 if o.startswith("state the answer") else 0.0)

    good = ScriptedModel(lambda r, a: 'You add two digits. Reply with the sum as digits only."}', name="w", loglik=wants_prompt)
    d = LLMPolicy(good, calibrate=False).decide(c, TASK)
    [v] = d.verdicts
    assert v.patch[0].path == "/system_prompt" and v.patch[0].value == "You add two digits. Reply with the sum as digits only."
    assert v.choice.stages[-1].free_text == FreeText(valid=True, why="")
    write = [a for a in d.actions if a.name == "feedback-write"]
    assert write and write[0].inputs["request"]["prefix"] == '{"system_prompt": "'
    bad = ScriptedModel(lambda r, a: 'ok"}', name="b", loglik=wants_prompt)  # too short: the next-best option instead
    [u] = LLMPolicy(bad, calibrate=False).decide(c, TASK).verdicts
    assert u.valid and u.patch[0].path == "/output_format"
    last = u.choice.stages[-1]
    assert last.excluded == (len(last.options) - 1,) and u.choice.stages[-2].free_text is not None and u.choice.stages[-2].free_text.valid is False
    leaks = ScriptedModel(lambda r, a: '7"}', name="l", loglik=wants_prompt)  # an answer is never a system prompt
    [x] = LLMPolicy(leaks, calibrate=False).decide(c, TASK).verdicts
    assert x.patch[0].path != "/system_prompt"


def run_llm(tmp: Path, judge: object, iterations: int = 3, levers: tuple[str, ...] = ("scaffold", "weights"), agent: object = None,
            calibrate: bool = True) -> Store:
    s = Store.create(tmp)
    cfg = LoopConfig(task="arith", iterations=iterations, levers=levers, feedback="llm", train_episodes=6, val_episodes=4, samples=2)  # type: ignore[arg-type]
    Loop(s, task=TASK, model=agent or scripted(sometimes_wrong), feedback=LLMPolicy(judge, calibrate=calibrate), config=cfg).run()  # type: ignore[arg-type]
    return s


def test_with_the_tiny_model_every_verdict_is_valid_and_replays(tmp_path: Path) -> None:
    from replay.recorded import replay_recorded
    from sia_engine.models.presets import tiny_model

    judge = tiny_model()
    with run_llm(tmp_path, judge) as s:
        vs = verdicts(s)
        assert len(vs) == 3 and all(v.valid and v.policy == "llm" and v.choice for v in vs)  # no fallback to rules
        for v in vs:
            for stage in v.choice.stages:
                assert stage.method == "log-likelihood, calibrated" and all(o.tokens > 0 and o.logprob < 0 and o.prior < 0 for o in stage.options)
        report = replay_recorded(s, "main", TASK)
        assert report.choices == 3 and report.verdicts == 3  # each model choice recomputed by the policy from the recorded log-likelihoods
        calls = [decode_envelope(e) for e in s.log.read("main", kinds=["action_taken"]) if b'"feedback-score"' in e.payload]
        first = calls[0]
        fresh = tiny_model()
        again = fresh.score_options(first.score_inputs().messages, first.score_inputs().options)  # type: ignore[attr-defined]
        prior = fresh.score_options(first.score_inputs().prior_messages, first.score_inputs().options)  # type: ignore[attr-defined]
        assert [(lp - pp) / n for (lp, n), (pp, _) in zip(again, prior)] == first.outputs["scores"]  # type: ignore[attr-defined]  # equal on CPU


def test_recorded_replay_catches_a_changed_choice(tmp_path: Path) -> None:
    from replay.recorded import ReplayDivergence, replay_recorded
    from sia_engine.domain.history import History

    judge = ScriptedModel(lambda r, a: "", name="j", loglik=lambda m, o, a: -float(len(o)))
    with run_llm(tmp_path, judge, iterations=1, levers=("scaffold",), calibrate=False) as s:
        assert replay_recorded(s, "main", TASK).choices == 1
        [v] = verdicts(s)
    # the same history written again with one recorded score changed: the recorded choice no longer follows
    with Store.create(tmp_path / "copy") as c:
        src = Store.open(tmp_path, read_only=True)
        events = [decode_envelope(e) for e in src.log.read("main")]
        src.close()
        stage = v.choice.stages[0]
        other = next(i for i in range(len(stage.options)) if i != stage.chosen)
        opts = list(stage.options)
        opts[other] = msgspec.structs.replace(opts[other], score=10.0)
        stage = msgspec.structs.replace(stage, options=tuple(opts))
        v = msgspec.structs.replace(v, choice=msgspec.structs.replace(v.choice, stages=(stage, *v.choice.stages[1:])))
        c.log.init_branch("main")
        h = History.open(c.log, "main", blobs=c.blobs)
        for e in events:
            h.record(v if isinstance(e, FeedbackVerdict) else e)
        with pytest.raises(ReplayDivergence) as exc:  # the policy recomputes each score from the recorded log-likelihoods
            replay_recorded(c, "main", TASK)
        assert exc.value.field == f"choice.stages[0].options[{other}].score" and exc.value.got == 10.0, str(exc.value)


def fake_endpoint(structured: bool, answer: str) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if "response_format" in body and not structured:
            return httpx.Response(400, json={"error": "response_format is not supported"})
        content = json.dumps({"choice": answer}) if "response_format" in body else answer
        choice: dict[str, object] = {"message": {"content": content}, "finish_reason": "stop"}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [{"token": "x", "logprob": -0.25}]}
        return httpx.Response(200, json={"choices": [choice]})

    return httpx.MockTransport(handler)


def test_an_endpoint_chooses_with_structured_outputs_or_a_validated_answer() -> None:
    from sia_engine.models.openai_compat import OpenAIChatModel

    c = ctx([f"It is {g}." for g in golds(8)])
    msgs = (Message("user", "which?"),)
    m = OpenAIChatModel("http://x/v1", "m", transport=fake_endpoint(True, "none"))
    index, scores, raw = m.choose(msgs, ["scaffold", "none"])
    assert index == 1 and raw["structured"] and scores == [-1.25, -0.25]
    assert raw["request"]["response_format"]["json_schema"]["schema"]["properties"]["choice"]["enum"] == ["scaffold", "none"]
    plain = OpenAIChatModel("http://x/v1", "m", transport=fake_endpoint(False, "scaffold"))
    index, scores, raw = plain.choose(msgs, ["scaffold", "none"])
    assert index == 0 and not raw["structured"] and scores == [1.0, 0.0] and "response_format" not in raw["request"]
    [v] = LLMPolicy(OpenAIChatModel("http://x/v1", "m", transport=fake_endpoint(True, NONE))).decide(c, TASK).verdicts
    assert v.valid and v.lever == "none" and v.choice.stages[0].method == "structured-output"
    lost = OpenAIChatModel("http://x/v1", "m", transport=fake_endpoint(False, "I would retrain"))
    [w] = LLMPolicy(lost).decide(c, TASK).verdicts  # no option named: all equal, the tie rule decides (recorded)
    assert w.valid and w.lever == "scaffold" and w.choice.stages[0].tied == tuple(range(len(w.choice.stages[0].options)))


def test_reexecution_recomputes_the_option_scores_exactly(tmp_path: Path) -> None:
    from replay.reexecute import reexecute
    from sia_engine.models.presets import tiny_model

    model = tiny_model()  # the agent and its Feedback Agent: one model, as `sia run --feedback llm` has it
    with run_llm(tmp_path, model, iterations=2, levers=("scaffold", "weights"), agent=model) as s:
        n_scores = sum(1 for e in s.log.read("main", kinds=["action_taken"]) if b'"feedback-score"' in e.payload)
        report = reexecute(s, "main", tiny_model())
        assert n_scores >= 2 and report.first_divergence is None and report.identical == report.outputs
        assert report.outputs >= n_scores  # the scored options and the agent's generations


def test_an_endpoint_writes_a_system_prompt_without_a_prefix() -> None:
    from sia_engine.models.openai_compat import OpenAIChatModel

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if "response_format" in body:
            enum = body["response_format"]["json_schema"]["schema"]["properties"]["choice"]["enum"]
            pick_ = "write a new system prompt" if "write a new system prompt" in enum else SCAFFOLD
            content = json.dumps({"choice": pick_})
        else:
            content = 'Sure: {"system_prompt": "You add two digits and reply with the sum only."}'
        return httpx.Response(200, json={"choices": [{"message": {"content": content}, "finish_reason": "stop"}]})

    c = ctx([f"It is {g}." for g in golds(8)])
    d = LLMPolicy(OpenAIChatModel("http://x/v1", "m", transport=httpx.MockTransport(handler))).decide(c, TASK)
    [v] = d.verdicts
    assert v.valid and v.patch[0].path == "/system_prompt" and v.patch[0].value == "You add two digits and reply with the sum only."
    write = next(a for a in d.actions if a.name == "feedback-write")
    assert write.inputs["request"]["prefix"] == "" and write.outputs["raw"]["request"]["messages"]
