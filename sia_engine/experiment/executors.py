"""Where an experiment's arms run: one after another in this process (``LocalExecutor``), or as
Ray tasks (``RayExecutor``), each on a worker with its own store.

An arm (``ArmJob``: an arm and seed, its branch forked from the prefix) is the same steps either
way (``run_arm``): the loop on its branch for its iterations, under its budget, then its head's
test score. The driver records the fork itself, when the arm starts (its wall time runs from it).

The Ray executor (``sia_engine.experiment.on_ray``) runs the same ``run_arm`` on workers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from sia_engine.domain.history import fork
from sia_engine.domain.payloads import Budget
from sia_engine.domain.projection import fold, records
from sia_engine.errors import SiaError
from sia_engine.experiment.artifact import record_best_artifact
from sia_engine.experiment.baselines import record_baselines, test_episodes
from sia_engine.experiment.table import ARM_FEEDBACK, Spending, spent
from sia_engine.loop.feedback.bandit import BanditPolicy
from sia_engine.loop.feedback.rule import FeedbackAgent
from sia_engine.loop.hooks import Hooks
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.loop.task import Task, scope_cache
from sia_engine.models.protocol import Model
from store import EventLog, Store

__all__ = ["ArmJob", "Setup", "LocalExecutor", "run_arm", "ensure_fork", "evaluate_test", "finish_arm"]

Setup = tuple[Task, Model, Callable[[], FeedbackAgent]]  # what ``make`` builds on a worker


class ArmJob(msgspec.Struct, frozen=True):
    """One arm and seed: its branch (forked from ``base``), levers, iterations and budget."""

    arm: str
    seed: int
    branch: str
    base: str
    levers: tuple[str, ...]
    iterations: int
    budget: Budget | None = None
    at: int = 0  # where the branch forks from the prefix, and what its branch_forked says
    overrides: dict[str, Any] = {}
    reason: str = ""


def ensure_fork(store: Store, job: ArmJob) -> None:
    """The arm's fork, recorded when the arm starts (its wall time and wall budget run from it)."""
    if job.branch not in {b.name for b in store.log.branches()}:
        fork(store.log, job.branch, source=job.base, at_seq=job.at, blobs=store.blobs, overrides=job.overrides, reason=job.reason)


def evaluate_test(loop: Loop) -> float:
    """Score the loop's head once on the task's test split (as many episodes as validation uses,
    the same protocol and seeds), recorded as trajectories and a ``version_evaluated`` of split
    ``test``; a head already scored there is not scored again. The loop never does this itself:
    only an experiment's last step does, so no decision ever reads the test split."""
    head = loop.hist.state.head_version
    assert head is not None
    done = head.score("test")
    if done is not None:
        return done
    episodes = test_episodes(loop)
    if not episodes:
        raise SiaError(f"task {loop.task.name!r} has no test episodes")
    loop.evaluate(head, decide=False, split="test", episodes=episodes)
    score = loop.hist.state.versions[head.version_id].score("test")
    assert score is not None
    return score


def finish_arm(loop: Loop, job: ArmJob) -> None:
    """An arm's last steps, outside its budget: its head's test score, then its best artifact."""
    evaluate_test(loop)
    record_best_artifact(loop, experiment=str(job.overrides.get("experiment", job.branch)))


def _out_of_budget(log: EventLog, branch: str, budget: Budget) -> bool:
    """Asked before each iteration of an arm: has its branch spent one of its limits?"""
    [used] = fold([Spending()], records(log, branch, own=True))
    return bool(budget.spent(spent(used)))


def _arm_config(config: LoopConfig, job: ArmJob, iterations: int) -> LoopConfig:
    feedback = ARM_FEEDBACK.get(job.arm, config.feedback)  # recorded on the fork (run_configured) where it differs
    return msgspec.structs.replace(config, levers=job.levers, seed=job.seed, iterations=iterations, feedback=feedback)


def run_arm(store: Store, job: ArmJob, setup: Setup, config: LoopConfig, hooks: Hooks | None = None,
            after: Callable[[], None] = lambda: None, iterations: int | None = None) -> Loop:
    """The arm's loop on its branch up to ``iterations`` (default: the job's), under its budget;
    ``after`` is called when it stops. Returns the loop (``evaluate_test`` scores its head)."""
    task, model, feedback = setup
    n = job.iterations if iterations is None else iterations
    scope_cache(task, job.branch)  # what the branch records is the same wherever it runs
    agent = BanditPolicy() if ARM_FEEDBACK.get(job.arm) == "bandit" else feedback()
    loop = Loop(store, task=task, model=model, feedback=agent, config=_arm_config(config, job, n),
                branch=job.branch, hooks=hooks)
    loop.run(stop=None if job.budget is None else functools.partial(_out_of_budget, store.log, job.branch, job.budget))
    after()
    return loop


class LocalExecutor:
    """The arms one after another, in this process, on the user's store."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup

    def run(self, store: Store, jobs: list[ArmJob], config: LoopConfig, hooks: Hooks | None = None) -> None:
        for job in jobs:
            ensure_fork(store, job)
            finish_arm(run_arm(store, job, self.setup, config, hooks), job)

    def baselines(self, loop: Loop, *, experiment: str, k: int, seeds: Sequence[int]) -> None:
        record_baselines(loop, experiment=experiment, k=k, seeds=seeds)
