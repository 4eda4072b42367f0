"""Training recipes for the weights lever: which one fits an iteration's trajectories, which
samples it trains on, and the training examples it builds from them.

- ``sft``: supervised fine-tuning on the gold answers of the episodes the head got wrong (only
  where the task has gold answers); chosen when the task has them and outputs are wrong,
  unless most outputs are invalid and some valid ones score (then rft teaches the valid form
  from the model's own outputs).
- ``rft``: rejection-sampling fine-tuning: of the k samples per episode, keep the valid ones that
  score above the head's mean sample score (or the top fraction), deduplicated by output.
- ``grpo``: group-relative policy optimisation on all k samples of every episode whose samples'
  scores differ, with those scores as the reward (run by TRL's GRPO trainer).

All of it is pure: the same trajectories give the same plan, so a recorded verdict can be
recomputed from the log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from sia_engine.domain.events import TrainingPlan, TrajectoryRecorded
from sia_engine.loop.task import Episode, Task
from sia_engine.models.protocol import Message, Recipe, TrainExample

__all__ = ["RECIPES", "gold_episodes", "choose_recipe", "plan_for", "training_examples"]

RECIPES: tuple[Recipe, ...] = ("sft", "rft", "grpo")
INVALID_SHARE = 0.5  # at least this share of invalid outputs: learn the valid ones first (rft)


def gold_episodes(task: Task) -> set[str]:
    """Ids of the training episodes that have a gold answer (what sft can learn from)."""
    return {e.id for e in task.episodes("train") if e.gold is not None}


def _failure(t: TrajectoryRecorded, failures: Mapping[str, str]) -> str:
    return failures.get(t.trajectory_id, t.failure or "none")


def _valid(t: TrajectoryRecorded, failures: Mapping[str, str]) -> bool:
    return _failure(t, failures) in ("none", "content")


def _spread_groups(trajs: Sequence[TrajectoryRecorded]) -> dict[str, list[TrajectoryRecorded]]:
    """Episodes with at least two samples whose scores differ (the groups GRPO learns from)."""
    groups: dict[str, list[TrajectoryRecorded]] = {}
    for t in trajs:
        groups.setdefault(t.episode_id, []).append(t)
    return {e: g for e, g in groups.items() if len(g) >= 2 and len({t.score or 0.0 for t in g}) > 1}


def choose_recipe(trajs: Sequence[TrajectoryRecorded], failures: Mapping[str, str], gold: set[str]) -> tuple[Recipe | None, str]:
    """The recipe the trajectories call for, and why (None: nothing to learn from)."""
    n = max(len(trajs), 1)
    valid = [t for t in trajs if _valid(t, failures)]
    invalid = len(trajs) - len(valid)
    scored = [t for t in valid if (t.score or 0.0) > 0]
    wrong = [t for t in trajs if _failure(t, failures) != "none" and t.episode_id in gold]
    if invalid / n >= INVALID_SHARE and scored:
        return "rft", f"{invalid} of {len(trajs)} outputs invalid: rft on the valid, scoring ones"
    if wrong:
        kinds = sorted({_failure(t, failures) for t in wrong})
        return "sft", f"{len(wrong)} outputs wrong ({', '.join(kinds)}) on episodes with gold answers: sft on the gold answers"
    groups = _spread_groups(trajs)
    distinct = len({round(t.score or 0.0, 6) for t in valid})
    if groups and distinct > 2:
        return "grpo", (f"no gold answers, a dense reward ({distinct} distinct scores) and {len(groups)} episodes whose "
                        "samples differ: grpo on those groups")
    if scored:
        return "rft", f"no gold answers and {'no spread within episodes' if not groups else 'a sparse reward'}: rft on the best samples"
    return None, "no sample scored above 0 and no gold answer applies: nothing to learn from"


def plan_for(recipe: Recipe, trajs: Sequence[TrajectoryRecorded], failures: Mapping[str, str], gold: set[str], *,
             why: str = "", rft_top: float = 0.0) -> TrainingPlan | None:
    """The samples ``recipe`` trains on (None when it has none here)."""
    ids: list[str] = []
    if recipe == "sft":
        seen: set[str] = set()
        for t in trajs:  # one example per episode that went wrong and has a gold answer
            if t.episode_id in gold and _failure(t, failures) != "none" and t.episode_id not in seen:
                seen.add(t.episode_id)
                ids.append(t.trajectory_id)
    elif recipe == "rft":
        valid = [t for t in trajs if _valid(t, failures)]
        if valid:
            scores = [t.score or 0.0 for t in valid]
            if rft_top > 0:
                ranked = sorted(valid, key=lambda t: -(t.score or 0.0))
                keep = ranked[: max(1, round(rft_top * len(ranked)))]
            else:
                mean = sum(scores) / len(scores)
                keep = [t for t in valid if (t.score or 0.0) > mean] or [t for t in valid if (t.score or 0.0) == max(scores)]
            outputs: set[str] = set()
            for t in keep:
                if (t.score or 0.0) > 0 and t.output not in outputs:  # deduplicated
                    outputs.add(t.output)
                    ids.append(t.trajectory_id)
    else:
        groups = _spread_groups(trajs)
        ids = [t.trajectory_id for t in trajs if t.episode_id in groups]
    if not ids:
        return None
    method: Literal["rejection_sampling", "gold"] = "gold" if recipe == "sft" else "rejection_sampling"
    return TrainingPlan(tuple(ids), method, recipe=recipe, why=why)


def training_examples(plan: TrainingPlan, trajs: Sequence[TrajectoryRecorded], episodes: Mapping[str, Episode],
                      messages: Mapping[str, tuple[Message, ...]], prefix: str) -> list[TrainExample]:
    """The examples ``plan`` names: prompts (with the answer's ``prefix``) and completions.

    sft learns the gold answer, rft the chosen samples (their scores travel along for the curve),
    grpo every sample of a group with its score as the reward."""
    recipe = plan.effective_recipe
    by_id = {t.trajectory_id: t for t in trajs}
    out = []
    for tid in plan.trajectory_ids:
        t = by_id[tid]
        ep = episodes[t.episode_id]
        if recipe == "sft":
            assert ep.gold is not None
            completion = ep.gold.removeprefix(prefix)
        else:
            completion = t.output.removeprefix(prefix)
        reward = None if recipe == "sft" else (t.score or 0.0)  # the sample's recorded score
        out.append(TrainExample(messages[ep.id], completion, source=tid, reward=reward, group=ep.id, prefix=prefix))
    return out
