"""The Feedback Agent: reads an iteration's trajectories and decides which lever to pull.

``RulePolicy`` is deterministic (the offline default). ``sia_engine.loop.feedback.model.LLMPolicy`` is a
model choosing among the valid options by its own log-likelihood.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from sia_engine.domain.events import (
    ActionTaken,
    FeedbackVerdict,
    TrainingPlan,
    TrajectoryRecorded,
)
from sia_engine.domain.scaffold import PatchOp, apply_patch
from sia_engine.domain.state import AgentState, Version, version_id
from sia_engine.errors import InvalidPatch
from sia_engine.loop.recipes import RECIPES, choose_recipe, gold_episodes, plan_for
from sia_engine.loop.task import Failure, Task
from sia_engine.models.protocol import Recipe

__all__ = ["Context", "Decision", "FeedbackAgent", "RulePolicy", "new_version"]

MAX_EXAMPLES = 4


class Context(msgspec.Struct, frozen=True):
    """What the Feedback Agent sees: the state, the head, this iteration's training trajectories
    (k samples per episode, with the task's failure class for each), the levers it may pull, and
    the run's recipe setting (``auto``: the agent chooses)."""

    state: AgentState
    head: Version
    trajectories: tuple[TrajectoryRecorded, ...]
    failures: dict[str, Failure]  # trajectory id -> failure class
    levers: tuple[str, ...]
    iteration: int
    recipe: str = "auto"
    rft_top: float = 0.0
    outcomes: tuple[Any, ...] = ()  # this history's candidates' outcomes, for a policy that reads them (feedback.bandit.Outcome)


class Decision(msgspec.Struct, frozen=True):
    """Verdicts to record, in order (an invalid one may precede the valid one that stands),
    and the model calls made to reach them."""

    verdicts: tuple[FeedbackVerdict, ...]
    actions: tuple[ActionTaken, ...] = ()


class FeedbackAgent(Protocol):
    name: str

    def decide(self, ctx: Context, task: Task) -> Decision: ...


def new_version(ctx: Context, ops: Sequence[PatchOp]) -> bool:
    """True if ``ops`` apply to the head scaffold and give a version not seen before."""
    assert ctx.state.run is not None
    try:
        sc = apply_patch(ctx.head.scaffold, ops)
    except InvalidPatch:
        return False
    return version_id(ctx.state.run.base_model, sc, ctx.head.adapter) not in ctx.state.versions


def _plateau(state: AgentState, lever: str, k: int = 2) -> bool:
    """The last ``k`` candidates of ``lever`` were all rejected."""
    recent = [v for v in state.ordered_versions() if v.lever == lever][-k:]
    return len(recent) == k and all(v.status == "rejected" for v in recent)


def _streak(state: AgentState, lever: str, k: int = 2) -> bool:
    """The last ``k`` candidates, of any lever, were all ``lever`` (accepted or not)."""
    recent = [v.lever for v in state.ordered_versions() if v.lever != "initial"][-k:]
    return len(recent) == k and all(x == lever for x in recent)


class RulePolicy:
    """Format and abstention failures -> scaffold, until two scaffold candidates in a row have
    left them above the threshold (the weights lever's turn: rft on the valid samples, or sft on
    gold answers); content errors that persist, or scaffold gains that plateau -> the weights
    lever with the recipe the trajectories call for, until two weights candidates in a row are
    rejected -> a worked example in the scaffold; otherwise nothing."""

    name = "rule"

    def __init__(self, *, threshold: float = 0.25) -> None:
        self.threshold = threshold

    def _format_ops(self, ctx: Context, task: Task) -> list[tuple[PatchOp, ...]]:
        """In order: a worked example from the model's own best valid output (when a sample was
        valid and scored: the surest fix of a small model's format, and never an answer the
        engine made up), the task's format hint (a shape), greedy decoding, gold examples."""
        own = self._example_ops(ctx, task, gold=False)[:1]
        options: list[tuple[PatchOp, ...]] = list(own)
        if ctx.head.scaffold.output_format != task.format_hint:
            options.append((PatchOp("replace", "/output_format", task.format_hint),))
        if ctx.head.scaffold.decoding.temperature > 0:
            options.append((PatchOp("replace", "/decoding/temperature", 0.0),))
        return options + self._example_ops(ctx, task)

    def _example_ops(self, ctx: Context, task: Task, *, gold: bool = True) -> list[tuple[PatchOp, ...]]:
        """Few-shot examples from failed training episodes' gold answers, then the model's own
        best valid outputs (format failures are never shown as examples)."""
        episodes = {e.id: e for e in task.episodes("train")}
        failed = [t for t in ctx.trajectories if ctx.failures.get(t.trajectory_id, "none") != "none"]
        valid = (t for t in ctx.trajectories if ctx.failures.get(t.trajectory_id, "none") in ("none", "content"))
        good = sorted((t for t in valid if (t.score or 0) > 0), key=lambda t: -(t.score or 0))
        pairs: list[tuple[str, str]] = []
        for t in failed if gold else ():
            ep = episodes.get(t.episode_id)
            if ep is not None and ep.gold is not None and (ep.input, ep.gold) not in pairs:
                pairs.append((ep.input, ep.gold))
        for t in good:
            if t.episode_id in episodes and (episodes[t.episode_id].input, t.output) not in pairs:
                pairs.append((episodes[t.episode_id].input, t.output))
        n = len(ctx.head.scaffold.examples)
        options: list[tuple[PatchOp, ...]] = []
        for inp, out in pairs:
            value = {"input": inp, "output": out}
            if n < MAX_EXAMPLES:
                options.append((PatchOp("add", "/examples/-", value),))
            else:
                options.append((PatchOp("replace", f"/examples/{ctx.iteration % MAX_EXAMPLES}", value),))
        return options

    def _training_plan(self, ctx: Context, task: Task) -> TrainingPlan | None:
        """A recipe from the trajectories (gold and content errors -> sft; many invalid outputs ->
        rft on the valid ones; no gold and a dense reward -> grpo; else rft), or the forced one."""
        gold = gold_episodes(task)
        recipe: Recipe | None
        if ctx.recipe in RECIPES:
            recipe, why = ctx.recipe, f"the run forces --recipe {ctx.recipe}"
        else:
            recipe, why = choose_recipe(ctx.trajectories, ctx.failures, gold)
        if recipe is None:
            return None
        return plan_for(recipe, ctx.trajectories, ctx.failures, gold, why=why, rft_top=ctx.rft_top)

    def decide(self, ctx: Context, task: Task) -> Decision:
        n = max(len(ctx.trajectories), 1)
        counts = {k: sum(1 for f in ctx.failures.values() if f == k) for k in ("format", "abstain", "content")}
        form = (counts["format"] + counts["abstain"]) / n
        errors = sum(counts.values()) / n
        evidence = tuple(t for t, f in ctx.failures.items() if f != "none")[:8]
        summary = f"{counts['format']} format, {counts['abstain']} abstention, {counts['content']} content errors in {n} outputs"
        can_scaffold = "scaffold" in ctx.levers
        can_train = "weights" in ctx.levers

        def scaffold(options: list[tuple[PatchOp, ...]], why: str) -> Decision | None:
            for ops in options:
                if new_version(ctx, ops):
                    v = FeedbackVerdict(version_id=ctx.head.version_id, lever="scaffold", rationale=f"{why}: {summary}", policy=self.name, evidence=evidence, patch=ops)
                    return Decision((v,))
            return None

        # two scaffold candidates in a row and format failures persist: the weights lever's turn
        stuck = form >= self.threshold and _streak(ctx.state, "scaffold")
        plan = self._training_plan(ctx, task) if can_train and errors >= self.threshold and not _plateau(ctx.state, "weights") else None
        if can_scaffold and form >= self.threshold and not _plateau(ctx.state, "scaffold") and not (stuck and plan is not None):
            d = scaffold(self._format_ops(ctx, task), "format or abstention failures")
            if d:
                return d
        if plan is not None:
            why = ("scaffold gains plateaued" if _plateau(ctx.state, "scaffold") else
                   "format failures persist after two scaffold candidates in a row" if stuck else "content errors persist")
            v = FeedbackVerdict(version_id=ctx.head.version_id, lever="weights", rationale=f"{why}: {summary}; {plan.recipe}: {plan.why}",
                                policy=self.name, evidence=evidence, training_plan=plan)
            return Decision((v,))
        if can_scaffold and errors > 0:
            d = scaffold(self._example_ops(ctx, task), "errors remain; adding a worked example")
            if d:
                return d
        why = "no errors" if errors == 0 else "no lever applies"
        return Decision((FeedbackVerdict(version_id=ctx.head.version_id, lever="none", rationale=f"{why}: {summary}", policy=self.name, evidence=evidence),))
