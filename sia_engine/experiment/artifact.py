"""The best artifact an arm found: the second measure of an experiment's arms.

An arm's test score (``evaluate_test``) is its head policy's mean sampled proposal. For a task
whose answer is one artifact (scrna-denoise's denoiser, TriMul's kernel), what a search reports is
the best single answer it found, so each arm is also measured that way: of every answer the arm
scored (its training rollouts and its evaluations, after its fork), each distinct answer is used
as the answer to every validation episode, the best on validation (the first of equals) is scored
once on test. Random search and best-of-k choose their best the same way (``_choose``), from as
many candidates as the arm scored in total (``sia_engine.experiment.baselines``).

It is a ``baseline_scored`` of method ``best-artifact`` recorded on the arm's own branch after its
test score, outside its budget (like the test step), so the table reads it from the log and a
recorded replay computes it again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sia_engine.domain.events import BaselineScored, BranchForked, TrajectoryRecorded
from sia_engine.domain.projection import records
from sia_engine.experiment.baselines import choose, test_episodes
from store import EventLog

if TYPE_CHECKING:
    from sia_engine.loop.loop import Loop

__all__ = ["METHOD", "arm_answers", "best_artifact", "record_best_artifact"]

METHOD = "best-artifact"


def arm_answers(log: EventLog, branch: str) -> list[str]:
    """Every answer the branch scored since its last fork (training and validation trajectories,
    in the order recorded; the test split's never)."""
    out: list[str] = []
    for r in records(log, branch, kinds=["branch_forked", "trajectory_recorded"]):
        if isinstance(r.event, BranchForked):
            out.clear()
        elif isinstance(r.event, TrajectoryRecorded) and r.event.split in ("train", "val"):
            out.append(r.event.output)
    return out


def best_artifact(loop: Loop, *, experiment: str) -> BaselineScored | None:
    """The arm's best artifact (see the module's docstring); None where it scored no answer."""
    answers = arm_answers(loop.store.log, loop.branch)
    distinct = list(dict.fromkeys(answers))
    test = test_episodes(loop)
    if not distinct or not loop.val or not test:
        return None
    best, scores, score = choose(loop.task, distinct, loop.val, test)
    return BaselineScored(experiment=experiment, method=METHOD, split="test", score=score, seed=loop.config.seed, val_score=scores[best],
                          evaluations=len(distinct) * len(loop.val), model_calls=0,
                          details={"scored": len(answers), "candidates": len(distinct), "val_scores": scores, "chosen": best})


def record_best_artifact(loop: Loop, *, experiment: str) -> None:
    """Record the arm's best artifact once (a resumed arm that has it records nothing)."""
    done = any(isinstance(r.event, BaselineScored) and r.event.method == METHOD
               for r in records(loop.store.log, loop.branch, own=True, kinds=["baseline_scored"]))
    if not done and (made := best_artifact(loop, experiment=experiment)) is not None:
        loop.hist.record(made)
