"""Scaffold-only vs weights-only vs both, as forks of one history (SIA's claim, measured).

``run_experiment`` records a shared prefix (the base version, evaluated once on validation) on
branch ``NAME-base``, forks it into one branch per arm and seed (``NAME-ARM-sSEED``; the fork's
``overrides`` say experiment, arm and seed), improves each for the same number of iterations
with the arm's levers, then scores each arm's head once on the test split, which the loop never
reads. ``experiment_table`` computes the table from recorded events alone, so the same function
gives the same table from the store and from an exported Parquet copy (``table_from_events``).
Interrupted, it resumes: existing forks continue, a head already scored on test is not re-scored.

Each arm may run under a ``Budget`` (model calls, LoRA training steps, wall seconds, counted on
its own branch): an arm stops starting iterations once any is spent, and the table says so.
Baselines (``sia_engine.experiment.baselines``): the base version on the test split, random
search and best-of-k sampling of the base with the arms' evaluation budget, and the task's
reference methods, all recorded on the prefix after the forks. ``paired`` compares two arms
seed by seed (a 95% t-interval of the differences).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import msgspec

from sia_engine.domain.events import VersionEvaluated
from sia_engine.domain.payloads import ArmOverrides, Budget
from sia_engine.domain.projection import records
from sia_engine.errors import SiaError
from sia_engine.experiment.executors import ArmJob, LocalExecutor, evaluate_test
from sia_engine.experiment.on_ray import RayExecutor
from sia_engine.experiment.table import ARMS, ExperimentResult, experiment_result, experiment_table
from sia_engine.loop.feedback.rule import FeedbackAgent
from sia_engine.loop.hooks import Hooks
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.loop.task import Task
from sia_engine.models.protocol import Model
from store import Store

__all__ = ["ARMS", "Budget", "parse_budget", "run_experiment", "evaluate_test"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}")


def parse_budget(text: str) -> Budget:
    """``calls=N,steps=N,wall=SECONDS`` (any of them) as a ``Budget``; ``SiaError`` says what is wrong."""
    keys = {"calls": "model_calls", "steps": "train_steps", "wall": "wall_s"}
    got: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, eq, value = part.partition("=")
        if not eq or key.strip() not in keys:
            raise SiaError(f"budget {part!r}: write calls=N, steps=N or wall=SECONDS, comma-separated (e.g. calls=400,wall=900)")
        try:
            v = float(value)
        except ValueError:
            raise SiaError(f"budget {part!r}: {value.strip()!r} is not a number") from None
        if not v > 0 or v != v or v == float("inf"):
            raise SiaError(f"budget {part!r}: give a positive, finite limit")
        if key.strip() != "wall" and v != int(v):
            raise SiaError(f"budget {part!r}: {key.strip()} counts, give a whole number")
        got[keys[key.strip()]] = v if key.strip() == "wall" else int(v)
    if not got:
        raise SiaError("budget is empty: write calls=N, steps=N or wall=SECONDS, comma-separated")
    return msgspec.convert(got, Budget)


def _prefix_seq(store: Store, base: str) -> int:
    """Where the arms fork: the base version's validation score, the prefix's last event before
    anything the arms may not see (its test score, the baselines)."""
    for r in records(store.log, base, kinds=["version_evaluated"]):
        if isinstance(r.event, VersionEvaluated) and r.event.split == "val":
            return r.seq
    raise SiaError(f"branch {base!r} has no validation score of the base version: it is not an experiment's prefix")


def run_experiment(
    store: Store,
    *,
    task: Task,
    model: Model,
    feedback: Callable[[], FeedbackAgent],
    config: LoopConfig,
    name: str = "exp",
    arms: Sequence[str] = ("scaffold", "weights", "both"),
    seeds: Sequence[int] = (0, 1, 2),
    iterations: int = 3,
    budget: Budget | None = None,
    baselines: bool = True,
    hooks: Hooks | None = None,
    executor: LocalExecutor | RayExecutor | None = None,
) -> ExperimentResult:
    """Run (or resume) the experiment and return its result (see the module's docstring)."""
    if not _NAME.fullmatch(name):
        raise SiaError(f"experiment name {name!r}: use letters, digits, '_', '.', '-' (up to 41), starting with a letter or digit")
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise SiaError(f"unknown arm(s) {bad or arms!r}: choose from {', '.join(ARMS)}")
    if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise SiaError(f"seeds {list(seeds)!r}: give distinct non-negative seeds")
    if "weights" in {lv for a in arms for lv in ARMS[a]} and not model.trains_weights:
        raise SiaError(f"model {model.ref.id!r} cannot train weights: run the scaffold arm only, or use a model that trains")
    base = f"{name}-base"
    prefix = msgspec.structs.replace(config, iterations=0)
    Loop(store, task=task, model=model, feedback=feedback(), config=prefix, branch=base, hooks=hooks).run()
    at = _prefix_seq(store, base)
    existing = {b.name: b for b in store.log.branches()}
    jobs = []
    for arm in arms:
        for seed in seeds:
            branch = f"{name}-{arm}-s{seed}"
            info = existing.get(branch)
            if info is not None and info.base_branch != base:
                raise SiaError(f"branch {branch!r} exists and is not a fork of {base!r}: choose another experiment name")
            overrides = ArmOverrides(experiment=name, arm=arm, seed=seed, levers=ARMS[arm], iterations=iterations, budget=budget)
            jobs.append(ArmJob(arm, seed, branch, base, ARMS[arm], iterations, budget, at=at, overrides=msgspec.to_builtins(overrides),
                               reason=f"experiment {name}: arm {arm}, seed {seed}"))
    runner = executor or LocalExecutor((task, model, feedback))
    runner.run(store, jobs, config, hooks)
    # the base version on the test split, then the baselines: on the prefix, after every fork point
    on_base = Loop(store, task=task, model=model, feedback=feedback(), config=prefix, branch=base, hooks=hooks)
    evaluate_test(on_base)
    if baselines:
        table = experiment_table(store, name)
        k = max((max(1, r.scored) for r in table), default=1)  # as many candidates as an arm scored answers in all
        runner.baselines(on_base, experiment=name, k=k, seeds=seeds)
    return experiment_result(store, name)
