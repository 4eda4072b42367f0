"""A Feedback Agent that is a model, with choices it cannot get wrong: it scores a closed set of
options with its own log-likelihood.

Each iteration is decided in stages: the lever (scaffold / weights / none), then the training
recipe (weights) or the scaffold change (scaffold). The options of every stage are built by the
engine from the iteration (the changes and recipes the rule policy knows, each checked to apply:
a patch that gives a new version, a recipe with something to learn from), so every option is a
valid verdict. The model reads a prompt that summarises the iteration (outputs, scores, failure
classes, earlier candidates per lever and whether they were accepted) and each option's text is
scored as the continuation of that prompt, less its log-likelihood after the same question alone
(calibration: what the iteration's evidence adds to the option, not how likely its words are
anyway; a small model otherwise repeats the first option its question names); the option with
the highest calibrated log-probability per token wins. Equal best scores are decided by a recorded, deterministic tie rule: the rule
policy's choice when it is among them, else the first in the listed order.

Free text (a new system prompt) is one more scaffold option: when chosen, the engine prefills
the JSON structure (``{"system_prompt": "``), the model writes the value greedily, and the
engine validates it; an invalid text passes the choice to the next-best option (recorded).

Everything is in the verdict's ``choice``: the prompt, every option with its log-probability,
token count and score, the chosen index and the tie rule applied, so a recorded replay
recomputes the choice from the recorded scores, and a re-execution recomputes the scores.

A model that cannot score text (an OpenAI-compatible endpoint) chooses through ``choose``:
structured outputs (a JSON schema whose only values are the option labels) where the server
supports them, else the same prompt and a validated answer; log-probabilities where returned.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from sia_engine.domain.events import ActionTaken, FeedbackVerdict, TrainingPlan
from sia_engine.domain.payloads import ChoiceStage, FreeText, ModelChoice, OptionScore, ScoreInputs
from sia_engine.domain.scaffold import Decoding, PatchOp
from sia_engine.errors import SiaError
from sia_engine.loop.feedback.rule import Context, Decision, RulePolicy, new_version
from sia_engine.loop.recipes import RECIPES, gold_episodes, plan_for
from sia_engine.loop.task import Task
from sia_engine.models.protocol import ChoosesOption, Message, Model, Request, ScoresOptions

__all__ = ["LLMPolicy", "Option", "pick", "choose_index", "preferred", "iteration_options", "summary_prompt", "prior_prompt", "scored_options", "TIE_RULE", "PROMPT_PREFIX"]

MAX_OPTIONS = 8
TIE_RULE = "equal best scores: the rule policy's choice when among them, else the first listed"
PROMPT_PREFIX = '{"system_prompt": "'
_SYSTEM = ("You are the Feedback Agent of a self-improving agent. You read what the agent did in this iteration and "
           "choose how to improve it next.")
# option texts share no word with the iteration's summary, so that calibration measures evidence,
# not a word the summary happens to repeat (a first version wrote "none" in both and SmolLM2 chose it 10 times in 10)
LEVER_LABELS = {"scaffold": "a change to its prompt", "weights": "training its weights", "none": "nothing this time"}
_CLASS = {"none": "right", "format": "badly formatted", "abstain": "abstained", "content": "wrong", "tampering": "tampered with its scoring"}
_QUESTIONS = {
    "lever": "What should improve the agent next: a change to its prompt, training its weights, or nothing?",
    "recipe": "Which training recipe should the adapter learn with?",
    "change": "Which change to the scaffold?",
}


@dataclass(frozen=True)
class Option:
    """One choice: the text the model scores, and what it becomes in the verdict."""

    label: str
    lever: str  # "scaffold" | "weights" | "none"
    patch: tuple[PatchOp, ...] = ()
    plan: TrainingPlan | None = None
    free_text: bool = False  # the model writes the value (a new system prompt)


def _describe(ops: tuple[PatchOp, ...]) -> str:
    op = ops[0]
    if op.path == "/output_format":
        return "state the answer format the task expects"
    if op.path == "/decoding/temperature":
        return "decode greedily (temperature 0)"
    if op.path.startswith("/examples"):
        return "add a worked example" if op.op == "add" else "replace a worked example"
    return f"{op.op} {op.path}"


def _change_options(ctx: Context, task: Task, rule: RulePolicy) -> list[Option]:
    opts: list[Option] = []
    seen: set[str] = set()
    examples = rule._example_ops(ctx, task)
    gold_inputs = {e.input for e in task.episodes("train") if e.gold is not None}
    for ops in rule._format_ops(ctx, task) + examples:
        if not new_version(ctx, ops):
            continue
        label = _describe(ops)
        if ops[0].path.startswith("/examples") and isinstance(ops[0].value, dict):
            v = ops[0].value
            own = v.get("input") not in gold_inputs or any(t.output == v.get("output") for t in ctx.trajectories)
            label += " made of the model's own best output" if own else " with the gold answer of a failed training episode"
        if label in seen:  # one option per kind of change: the first (the rule policy's order) stands for it
            continue
        seen.add(label)
        opts.append(Option(label, "scaffold", ops))
    opts.append(Option("write a new system prompt", "scaffold", free_text=True))
    return opts[:MAX_OPTIONS]


def _recipe_options(ctx: Context, task: Task) -> list[Option]:
    gold = gold_episodes(task)
    recipes = [ctx.recipe] if ctx.recipe in RECIPES else list(RECIPES)
    what = {"sft": "learn the gold answers of the episodes it got wrong", "rft": "learn from its own best valid outputs",
            "grpo": "reinforce its better samples against its worse ones"}
    opts = []
    for r in recipes:
        plan = plan_for(r, ctx.trajectories, ctx.failures, gold, why="chosen by the model", rft_top=ctx.rft_top)
        if plan is not None:
            opts.append(Option(f"{r}: {what[r]}", "weights", plan=plan))
    return opts


def iteration_options(ctx: Context, task: Task, rule: RulePolicy) -> dict[str, list[Option]]:
    """The closed sets of options of every stage (lever, recipe, change), built once; each option
    a valid verdict. A lever is offered when its stage has an option."""
    change = _change_options(ctx, task, rule) if "scaffold" in ctx.levers else []
    recipe = _recipe_options(ctx, task) if "weights" in ctx.levers else []
    lever = [Option(LEVER_LABELS[k], k) for k, has in (("scaffold", change), ("weights", recipe)) if has]
    return {"lever": [*lever, Option(LEVER_LABELS["none"], "none")], "recipe": recipe, "change": change}


def preferred(stage: str, opts: Sequence[Option], rule_verdict: FeedbackVerdict) -> int | None:
    """The option of ``stage`` that the rule policy's verdict chose (None: none of them)."""
    for i, o in enumerate(opts):
        if stage == "lever" and o.lever == rule_verdict.lever:
            return i
        if stage == "change" and not o.free_text and msgspec.to_builtins(o.patch) == msgspec.to_builtins(rule_verdict.patch):
            return i
        if stage == "recipe" and rule_verdict.training_plan is not None and o.plan is not None \
                and o.plan.recipe == rule_verdict.training_plan.effective_recipe:
            return i
    return None


def choose_index(rows: Sequence[OptionScore], excluded: Sequence[int], prefer: int | None) -> tuple[int, list[int]]:
    """A stage's choice from its recorded option scores: ``pick`` among the options not excluded."""
    live = [i for i in range(len(rows)) if i not in set(excluded)]
    j, tied = pick([rows[i].score for i in live], live.index(prefer) if prefer in live else None)
    return live[j], [live[t] for t in tied]


def pick(scores: Sequence[float], preferred: int | None) -> tuple[int, list[int]]:
    """The chosen index and the tied best ones: the highest score; among equal best (to 1e-9),
    ``preferred`` when it is one of them, else the first."""
    best = max(scores)
    tied = [i for i, s in enumerate(scores) if abs(s - best) <= 1e-9]
    return (preferred if preferred in tied else tied[0]), tied


def summary_prompt(ctx: Context, task: Task, stage: str, max_outputs: int = 6) -> tuple[Message, ...]:
    """What the model reads before each stage's options."""
    n = max(len(ctx.trajectories), 1)
    counts = {k: sum(1 for f in ctx.failures.values() if f == k) for k in ("none", "format", "abstain", "content")}
    scores = [t.score or 0.0 for t in ctx.trajectories]
    lines = [f"Task: {task.name}: {task.description}".rstrip(": "),
             f"Iteration {ctx.iteration}; levers allowed: {', '.join(ctx.levers)}.",
             f"This iteration: {len(ctx.trajectories)} outputs, mean score {sum(scores) / n:.3f}, best {max(scores, default=0.0):.3f}; "
             f"{counts['none']} right, {counts['format']} badly formatted, {counts['abstain']} abstained, {counts['content']} wrong."]
    for t in sorted(ctx.trajectories, key=lambda t: -(t.score or 0.0))[:max_outputs]:
        lines.append(f"- score {t.score or 0.0:.3f} ({_CLASS.get(ctx.failures.get(t.trajectory_id, 'none'), 'right')}): {t.output[:120]!r}")
    history: dict[str, tuple[int, int]] = {}
    for v in ctx.state.ordered_versions():
        if v.lever != "initial":
            made, acc = history.get(v.lever, (0, 0))
            history[v.lever] = (made + 1, acc + (v.status == "accepted"))
    kinds = {"scaffold": "prompt changes", "weights": "trained adapters"}
    lines.append("Earlier candidates: " + ("; ".join(f"{kinds.get(k, k)}: {m} made, {a} accepted" for k, (m, a) in sorted(history.items()))
                                            or "this is the first iteration") + ".")
    lines.append(_QUESTIONS[stage])
    return (Message("system", _SYSTEM), Message("user", "\n".join(lines)))


def scored_options(score_options: Callable[[Sequence[Message], Sequence[str]], list[tuple[float, int]]], messages: Sequence[Message], labels: Sequence[str],
                   prior_messages: Sequence[Message] | None) -> list[OptionScore]:
    """Each option's log-probability after ``messages``, less its log-probability after
    ``prior_messages`` (None: no calibration), per token: the rows a verdict records."""
    got = score_options(messages, labels)
    prior = score_options(prior_messages, labels) if prior_messages is not None else [(0.0, nt) for _, nt in got]
    return [OptionScore(label=lab, logprob=lp, prior=pp, tokens=nt, score=(lp - pp) / max(nt, 1))
            for lab, (lp, nt), (pp, _) in zip(labels, got, prior, strict=True)]


def prior_prompt(stage: str) -> tuple[Message, ...]:
    """The stage's question without the iteration: how likely each option is before any evidence."""
    return (Message("system", _SYSTEM), Message("user", _QUESTIONS[stage]))


class LLMPolicy:
    """The constrained model Feedback Agent (see the module's docstring)."""

    name = "llm"

    def __init__(self, model: Model, *, max_prompt_tokens: int = 200, calibrate: bool = True) -> None:
        self.model = model
        self.calibrate = calibrate
        self.rule = RulePolicy()
        self.max_prompt_tokens = max_prompt_tokens

    def _score(self, ctx: Context, stage: str, messages: tuple[Message, ...], opts: list[Option]) -> tuple[list[OptionScore], ActionTaken, str]:
        labels = [o.label for o in opts]
        aid = f"feedback-{ctx.iteration}-{stage}"
        inputs = ScoreInputs(messages=messages, options=tuple(labels), adapter=ctx.head.adapter, model=self.model.ref.id)
        if isinstance(self.model, ScoresOptions):
            bare = prior_prompt(stage) if self.calibrate else None  # what the iteration adds: the question without it
            inputs = msgspec.structs.replace(inputs, prior_messages=bare)
            rows = scored_options(self.model.score_options, messages, labels, bare)
            method = "log-likelihood, calibrated" if self.calibrate else "log-likelihood"
            outputs: dict[str, Any] = {"scores": [r.score for r in rows]}
        elif isinstance(self.model, ChoosesOption):
            index, scores, raw = self.model.choose(messages, labels)
            rows = [OptionScore(label=lab, score=s) for lab, s in zip(labels, scores, strict=True)]
            method = "structured-output" if raw.get("structured") else "validated-answer"
            outputs = {"index": index, "scores": scores, "raw": raw}
        else:
            raise SiaError(f"{self.model.ref.id} neither scores options nor chooses one: the llm Feedback Agent cannot ask it")
        return rows, ActionTaken(action_id=aid, episode_id=aid, version_id=ctx.head.version_id, actor="model", name="feedback-score",
                                 inputs=msgspec.to_builtins(inputs), outputs=outputs), method

    def _write_prompt(self, ctx: Context, task: Task) -> tuple[str | None, str, ActionTaken]:
        """A new system prompt written by the model after the engine's JSON opening: (text, why invalid, action)."""
        summary = summary_prompt(ctx, task, "change")
        msgs = (*summary[:-1], Message("user", summary[-1].content + "\nWrite a better system prompt for the agent as JSON."))
        prefill = isinstance(self.model, ScoresOptions)  # a local model continues the engine's opening; an endpoint cannot
        req = Request(msgs if prefill else (*msgs[:-1], Message("user", msgs[-1].content + ' Answer {"system_prompt": "..."} only.')),
                      Decoding(temperature=0.0, max_new_tokens=self.max_prompt_tokens, stop=('"}',)), seed=ctx.iteration,
                      prefix=PROMPT_PREFIX if prefill else "")
        [gen] = self.model.generate([req])
        aid = f"feedback-{ctx.iteration}-write"
        action = ActionTaken(action_id=aid, episode_id=aid, version_id=ctx.head.version_id, actor="model", name="feedback-write",
                             inputs={"request": msgspec.to_builtins(req)}, outputs={"text": gen.text, **({"raw": gen.raw} if gen.raw else {})})
        text = (PROMPT_PREFIX + gen.text) if prefill else gen.text[gen.text.find("{"):] if "{" in gen.text else gen.text
        try:
            value = json.loads(text.split('"}')[0] + '"}')["system_prompt"]
            if not isinstance(value, str):
                raise TypeError("system_prompt is not a string")
        except (ValueError, KeyError, TypeError) as e:
            return None, f"not a JSON string ({e})", action
        value = value.strip()
        if not 20 <= len(value) <= 2000:
            return None, f"{len(value)} characters (20-2000 wanted)", action
        if value == ctx.head.scaffold.system_prompt:
            return None, "the same as the current system prompt", action
        if task.parse_answer(value) is not None:
            return None, "it holds an answer", action
        if not new_version(ctx, (PatchOp("replace", "/system_prompt", value),)):
            return None, "it gives a version already tried", action
        return value, "", action

    def decide(self, ctx: Context, task: Task) -> Decision:
        [rule_verdict] = self.rule.decide(ctx, task).verdicts[-1:]
        actions: list[ActionTaken] = []
        stages: list[ChoiceStage] = []
        options = iteration_options(ctx, task, self.rule)
        final = options["lever"][self._stage(ctx, task, "lever", options["lever"], rule_verdict, actions, stages)]
        if final.lever != "none":
            stage = "recipe" if final.lever == "weights" else "change"
            opts = options[stage]
            skip: set[int] = set()
            while True:
                i = self._stage(ctx, task, stage, opts, rule_verdict, actions, stages, skip)
                final = opts[i]
                if not final.free_text:
                    break
                value, why, action = self._write_prompt(ctx, task)
                actions.append(action)
                stages[-1] = msgspec.structs.replace(stages[-1], free_text=FreeText(valid=value is not None, why=why))
                if value is not None:
                    final = Option(final.label, "scaffold", (PatchOp("replace", "/system_prompt", value),))
                    break
                skip.add(i)  # invalid text: the next-best option of the same stage
                if len(skip) == len(opts):
                    final = Option("none", "none")
                    break
        chosen = ", ".join(f"{s.chosen_label} ({s.stage})" for s in stages)
        verdict = FeedbackVerdict(
            version_id=ctx.head.version_id, lever=final.lever, rationale=f"chosen by likelihood: {chosen}", policy=self.name,  # type: ignore[arg-type]
            evidence=tuple(t for t, f in ctx.failures.items() if f != "none")[:8], patch=final.patch, training_plan=final.plan,
            choice=ModelChoice(stages=tuple(stages), tie_rule=TIE_RULE, rule_verdict=rule_verdict.lever),
        )
        return Decision((verdict,), tuple(actions))

    def _stage(self, ctx: Context, task: Task, stage: str, opts: list[Option], rule_verdict: FeedbackVerdict,
               actions: list[ActionTaken], stages: list[ChoiceStage], skip: set[int] | None = None) -> int:
        rows: Sequence[OptionScore]
        if skip:  # a retry after an invalid free text: scored already, choose among the rest
            rows = stages[-1].options
            method = stages[-1].method
        else:
            rows, action, method = self._score(ctx, stage, summary_prompt(ctx, task, stage), opts)
            actions.append(action)
        prefer = preferred(stage, opts, rule_verdict)
        index, tied = choose_index(rows, sorted(skip or ()), prefer)
        stages.append(ChoiceStage(stage=stage, options=tuple(rows), method=method, chosen=index, chosen_label=opts[index].label,
                                  tied=tuple(tied), preferred=prefer, excluded=tuple(sorted(skip or ()))))
        return index
