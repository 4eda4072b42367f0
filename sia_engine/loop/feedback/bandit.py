"""A Feedback Agent that learns which lever pays from this history's own record (``--feedback bandit``).

The options are the rule policy's, split by what they change: ``scaffold:format`` (the output
format or the decoding), ``scaffold:example`` (a worked example), and ``weights:RECIPE`` for each
training recipe that has samples to train on this iteration. Each candidate an option made in this
history is an outcome (``outcomes``): its validation gain over the version it was made from
(negative for a worse one, the rejected included) and its cost, in model calls: its evaluation's
generations plus ``STEP_CALLS`` per LoRA step (a LoRA step at batch 4 costs about as much as 8
generation calls on the CPU this engine was measured on: 4.5 s against about 0.56 s). An option's
reward per outcome is its gain per unit of cost, in units of the cheapest outcome's cost.

The choice is UCB1: an option never tried first (in an order shuffled by a generator seeded from
the run seed and the iteration), else the largest mean reward plus ``spread * sqrt(2 ln N / n)``
(``n`` the option's outcomes, ``N`` all of them, ``spread`` the largest reward's size seen, at
least ``MIN_SPREAD``); ties go the shuffled order's way. The verdict records every option's
statistics in its ``choice`` (method ``ucb1``: per option ``n``, ``mean``, ``bonus`` and the
index as ``score``; an untried option's index is ``UNTRIED``). It is a pure function of the
history, so a recorded replay recomputes it and compares it field by field.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import msgspec

from sia_engine.domain.events import AdapterCheckpointed, FeedbackVerdict, ScaffoldPatched, TrainingPlan, TrajectoryRecorded, VersionEvaluated
from sia_engine.domain.payloads import ChoiceStage, ModelChoice, OptionScore
from sia_engine.domain.projection import records
from sia_engine.domain.scaffold import PatchOp
from sia_engine.loop.feedback.rule import Context, Decision, RulePolicy, new_version
from sia_engine.loop.recipes import RECIPES, gold_episodes, plan_for
from sia_engine.loop.task import Task
from store import EventLog

__all__ = ["BanditPolicy", "Outcome", "outcomes", "option_of", "STEP_CALLS", "UNTRIED"]

STEP_CALLS = 8.0
MIN_SPREAD = 0.01
UNTRIED = 1e9  # an untried option's index: tried before any other


class Outcome(msgspec.Struct, frozen=True):
    """One candidate an option made: its validation gain over its parent, and its cost in calls."""

    option: str
    gain: float
    cost: float


def option_of(verdict: FeedbackVerdict) -> str | None:
    """The option a valid verdict took (None: no lever pulled)."""
    if not verdict.valid:
        return None
    if verdict.lever == "weights" and verdict.training_plan is not None:
        return f"weights:{verdict.training_plan.recipe}"
    if verdict.lever == "scaffold":
        return "scaffold:example" if any(op.path.startswith("/examples") for op in verdict.patch) else "scaffold:format"
    return None


def outcomes(log: EventLog, branch: str) -> tuple[Outcome, ...]:
    """Every candidate of this history with its option, gain and cost, in the order evaluated."""
    val: dict[str, float] = {}  # version -> its latest validation score
    made: dict[str, tuple[str, str, int]] = {}  # candidate -> (option, parent, LoRA steps)
    calls: dict[str, int] = {}  # candidate -> its evaluation's outputs
    pending: str | None = None
    out: list[Outcome] = []
    for r in records(log, branch, kinds=["feedback_verdict", "scaffold_patched", "adapter_checkpointed", "version_evaluated", "trajectory_recorded"]):
        e = r.event
        if isinstance(e, FeedbackVerdict):
            pending = option_of(e) if e.valid else pending
        elif isinstance(e, (ScaffoldPatched, AdapterCheckpointed)) and pending is not None:
            steps = (len(e.curve) or _steps(e.hyper.get("steps"))) if isinstance(e, AdapterCheckpointed) else 0
            made[e.version_id], pending = (pending, e.parent_version, steps), None
        elif isinstance(e, TrajectoryRecorded) and e.split == "val" and e.version_id in made:
            calls[e.version_id] = calls.get(e.version_id, 0) + 1
        elif isinstance(e, VersionEvaluated) and e.split == "val":
            if e.version_id in made and e.version_id not in val and made[e.version_id][1] in val:
                option, parent, steps = made[e.version_id]
                out.append(Outcome(option, round(e.score - val[parent], 6), calls.get(e.version_id, 0) + STEP_CALLS * steps))
            val[e.version_id] = e.score
    return tuple(out)


def _steps(value: object) -> int:
    """A recorded step count (anything else, in a history from elsewhere, counts none)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class BanditPolicy(RulePolicy):
    """UCB1 over the rule policy's options, from this history's outcomes (see the module's docstring)."""

    name = "bandit"
    reads_outcomes = True  # the loop gives it ``Context.outcomes``

    def _options(self, ctx: Context, task: Task) -> list[tuple[str, tuple[PatchOp, ...] | TrainingPlan]]:
        """Each option that can make a new candidate now, with what it would do."""
        out: list[tuple[str, tuple[PatchOp, ...] | TrainingPlan]] = []
        if "scaffold" in ctx.levers:
            ops = [o for o in self._format_ops(ctx, task) + self._example_ops(ctx, task) if new_version(ctx, o)]
            fmt = next((o for o in ops if not any(op.path.startswith("/examples") for op in o)), None)
            ex = next((o for o in ops if any(op.path.startswith("/examples") for op in o)), None)
            out += [(label, o) for label, o in (("scaffold:format", fmt), ("scaffold:example", ex)) if o is not None]
        if "weights" in ctx.levers:
            gold = gold_episodes(task)
            for recipe in RECIPES:
                if ctx.recipe in ("auto", recipe):
                    plan = plan_for(recipe, ctx.trajectories, ctx.failures, gold, why=f"{recipe}: chosen by UCB1", rft_top=ctx.rft_top)
                    if plan is not None:
                        out.append((f"weights:{recipe}", plan))
        return out

    def decide(self, ctx: Context, task: Task) -> Decision:
        options = self._options(ctx, task)
        if not options:
            return Decision((FeedbackVerdict(version_id=ctx.head.version_id, lever="none", rationale="no option can make a new candidate",
                                             policy=self.name),))
        stage = ucb_stage([label for label, _ in options], ctx.outcomes, seed=ctx.state.run.seed if ctx.state.run else 0, iteration=ctx.iteration)
        label, what = options[stage.chosen]
        stats = "; ".join(f"{o.label} {_stat(o)}" for o in stage.options)
        why = f"UCB1 over {len(ctx.outcomes)} outcomes of this history: {label} ({stats})"
        choice = ModelChoice(stages=(stage,), tie_rule="an order shuffled from the run seed and the iteration")
        if isinstance(what, TrainingPlan):
            return Decision((FeedbackVerdict(version_id=ctx.head.version_id, lever="weights", rationale=why, policy=self.name,
                                             training_plan=what, choice=choice),))
        return Decision((FeedbackVerdict(version_id=ctx.head.version_id, lever="scaffold", rationale=why, policy=self.name, patch=what,
                                         choice=choice),))


def _stat(o: OptionScore) -> str:
    return "untried" if o.n == 0 else f"n={o.n} mean={o.mean:+.4f} bonus={o.bonus:.4f}"


def ucb_stage(labels: Sequence[str], seen: Sequence[Outcome], *, seed: int, iteration: int) -> ChoiceStage:
    """UCB1's choice among ``labels`` after the outcomes ``seen``, with every option's statistics."""
    cheapest = min((o.cost for o in seen if o.cost > 0), default=1.0)
    rewards: dict[str, list[float]] = {label: [] for label in labels}
    for o in seen:
        if o.option in rewards:
            rewards[o.option].append(o.gain * cheapest / o.cost if o.cost > 0 else o.gain)
    total = sum(len(v) for v in rewards.values())
    spread = max([MIN_SPREAD, *(abs(x) for v in rewards.values() for x in v)])
    order = list(range(len(labels)))
    random.Random(f"bandit:{seed}:{iteration}").shuffle(order)
    scores = []
    for label in labels:
        xs = rewards[label]
        if not xs:
            scores.append(OptionScore(label=label, score=UNTRIED, n=0))
            continue
        mean = sum(xs) / len(xs)
        bonus = spread * math.sqrt(2 * math.log(max(total, 1)) / len(xs))
        scores.append(OptionScore(label=label, score=round(mean + bonus, 9), n=len(xs), mean=round(mean, 9), bonus=round(bonus, 9)))
    chosen = max(order, key=lambda i: (scores[i].score, -order.index(i)))
    tied = tuple(i for i in order if scores[i].score == scores[chosen].score)
    return ChoiceStage(stage="option", method="ucb1", options=tuple(scores), chosen=chosen, chosen_label=labels[chosen], excluded=(),
                       preferred=None, tied=tied)
