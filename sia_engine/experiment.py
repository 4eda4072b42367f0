"""Scaffold-only vs weights-only vs both, as forks of one history (SIA's claim, measured).

``run_experiment`` records a shared prefix (the base version, evaluated once on validation) on
branch ``NAME-base``, forks it into one branch per arm and seed (``NAME-ARM-sSEED``; the fork's
``overrides`` say experiment, arm and seed), improves each for the same number of iterations
with the arm's levers, then scores each arm's head once on the test split, which the loop never
reads. ``experiment_table`` computes the table from recorded events alone, so the same function
gives the same table from the store and from an exported Parquet copy (``table_from_events``).
Interrupted, it resumes: existing forks continue, a head already scored on test is not re-scored.

Baselines: the base version on the test split (recorded on the prefix, after the forks) and
uniform random search over the task's answer space with as many candidates as an arm evaluated
versions (computed, deterministic from the seeds; not recorded). Not yet here (issue 11 asks for
them): best-of-k sampling of the base and the measured runs. ``paired`` compares two arms seed by
seed (a 95% t-interval of the differences).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from sia_engine.errors import SiaError
from sia_engine.feedback import FeedbackAgent
from sia_engine.history import History
from sia_engine.hooks import Hooks
from sia_engine.loop import Loop, LoopConfig
from sia_engine.model import Model
from sia_engine.task import Task
from store import Store

__all__ = ["ARMS", "ArmResult", "Baseline", "Paired", "paired", "random_search", "base_test_score", "run_experiment", "evaluate_test", "experiment_table", "table_from_events", "EventRow"]

ARMS: dict[str, tuple[str, ...]] = {"scaffold": ("scaffold",), "weights": ("weights",), "both": ("scaffold", "weights")}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}")


class ArmResult(msgspec.Struct, frozen=True):
    arm: str
    seed: int
    branch: str
    test_score: float | None  # None: not scored on test yet (an interrupted experiment)
    val_score: float | None  # the head's validation score
    iterations: int
    levers_used: tuple[str, ...]  # levers of the candidates made
    candidates: int
    accepted: int
    model_calls: int  # generations recorded on the branch (training, validation and test rollouts)
    train_steps: int  # LoRA steps over all adapters trained on the branch
    wall_s: float  # from the fork to the last event on the branch


@dataclass
class EventRow:
    """An event as the table needs it: from the log (``Envelope``) or a Parquet export's row."""

    branch: str
    seq: int
    kind: str
    payload: dict[str, Any]
    recorded_at: datetime


@dataclass
class _Arm:
    arm: str
    seed: int
    branch: str
    events: list[EventRow] = field(default_factory=list)


def table_from_events(rows: Iterable[EventRow], name: str) -> list[ArmResult]:
    """The experiment ``name``'s table from each arm branch's own events (ordered by seq)."""
    arms: dict[str, _Arm] = {}
    by_branch: dict[str, list[EventRow]] = {}
    for r in rows:
        by_branch.setdefault(r.branch, []).append(r)
    for branch, evs in by_branch.items():
        evs.sort(key=lambda r: r.seq)
        first = evs[0]
        o = first.payload.get("overrides", {}) if first.kind == "branch_forked" else {}
        if o.get("experiment") == name:
            arms[branch] = _Arm(str(o["arm"]), int(o["seed"]), branch, evs)
    base_val = None  # the base version's validation score, recorded once on the prefix
    for e in by_branch.get(f"{name}-base", ()):
        if e.kind == "version_evaluated" and e.payload["split"] == "val":
            base_val = float(e.payload["score"])
    out = []
    for a in sorted(arms.values(), key=lambda a: (list(ARMS).index(a.arm) if a.arm in ARMS else 99, a.seed)):
        kinds = [e.kind for e in a.events]
        head = None
        test = None
        for e in a.events:
            if e.kind == "version_accepted":
                head = e.payload["version_id"]
            elif e.kind == "rolled_back":
                head = e.payload["to_version"]
        val = base_val if head is None else None  # nothing accepted: the head is still the base
        for e in a.events:
            if e.kind == "version_evaluated" and (head is None or e.payload["version_id"] == head):
                if e.payload["split"] == "test":
                    test = float(e.payload["score"])
                elif e.payload["split"] == "val" and head is not None:
                    val = float(e.payload["score"])
        levers = tuple(dict.fromkeys("scaffold" if k == "scaffold_patched" else "weights" for k in kinds
                                     if k in ("scaffold_patched", "adapter_checkpointed")))
        steps = sum(len(e.payload.get("curve", ())) or int(e.payload.get("hyper", {}).get("steps", 0))
                    for e in a.events if e.kind == "adapter_checkpointed")
        calls = sum(1 for e in a.events if e.kind == "action_taken" and e.payload.get("actor") == "model")
        out.append(ArmResult(
            arm=a.arm, seed=a.seed, branch=a.branch, test_score=test, val_score=val,
            iterations=kinds.count("iteration_started"), levers_used=levers,
            candidates=kinds.count("scaffold_patched") + kinds.count("adapter_checkpointed"),
            accepted=kinds.count("version_accepted"), model_calls=calls, train_steps=steps,
            wall_s=round((a.events[-1].recorded_at - a.events[0].recorded_at).total_seconds(), 3),
        ))
    return out


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
    episodes = loop.task.episodes("test")[: loop.config.val_episodes]
    if not episodes:
        raise SiaError(f"task {loop.task.name!r} has no test episodes")
    loop.evaluate(head, decide=False, split="test", episodes=episodes)
    score = loop.hist.state.versions[head.version_id].score("test")
    assert score is not None
    return score


class Baseline(msgspec.Struct, frozen=True):
    """A baseline beside the arms: ``test_score`` per seed (mean over seeds in ``mean``)."""

    name: str
    test_scores: tuple[float, ...]
    evaluations: int  # validation scorings it used per seed (random search: as many as an arm's versions)
    note: str = ""

    @property
    def mean(self) -> float:
        return sum(self.test_scores) / len(self.test_scores)


def random_search(task: Task, *, k: int, val_episodes: int, seeds: Sequence[int]) -> Baseline | None:
    """Uniform random search over the task's answer space (``Task.random_answer``), as many
    candidates per seed as an arm evaluated versions (``k``): each candidate answers every
    validation episode from its own random stream, the best on validation is scored on test.
    None for a task that cannot draw random answers."""
    draw = getattr(task, "random_answer", None)
    if draw is None:
        return None
    val = task.episodes("val")[:val_episodes]
    test = task.episodes("test")[:val_episodes]

    def mean_score(j: str, episodes: Sequence[Any]) -> float:
        return sum(task.score(ep, draw(random.Random(j), ep)).score for ep in episodes) / len(episodes)

    scores = []
    for seed in seeds:
        cands = [f"random-search:{seed}:{j}" for j in range(k)]
        best = max(cands, key=lambda j: mean_score(j, val))  # the first of equals: max keeps it
        scores.append(round(mean_score(best, test), 6))
    return Baseline("random search", tuple(scores), k * len(val), f"{k} random answers per seed, the best on val")


# two-sided 95% quantiles of Student's t, by degrees of freedom (1..30)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


class Paired(msgspec.Struct, frozen=True):
    """``a`` vs ``b`` seed by seed on the test split: the differences (a - b), their mean and a
    95% t-interval; ``excludes_zero`` says whether the interval lies wholly on one side of 0."""

    a: str
    b: str
    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    mean: float
    low: float | None  # None with fewer than two seeds: no interval
    high: float | None

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def paired(table: Sequence[ArmResult], a: str = "both", b: str = "scaffold") -> Paired | None:
    """Arm ``a`` against arm ``b`` on the seeds both were scored on (None: no such seed)."""
    sa = {r.seed: r.test_score for r in table if r.arm == a and r.test_score is not None}
    sb = {r.seed: r.test_score for r in table if r.arm == b and r.test_score is not None}
    seeds = tuple(sorted(sa.keys() & sb.keys()))
    if not seeds:
        return None
    d = tuple(round(sa[x] - sb[x], 6) for x in seeds)
    n = len(d)
    mean = sum(d) / n
    if n < 2:
        return Paired(a, b, seeds, d, round(mean, 6), None, None)
    sd = (sum((x - mean) ** 2 for x in d) / (n - 1)) ** 0.5
    half = (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * sd / n**0.5
    return Paired(a, b, seeds, d, round(mean, 6), round(mean - half, 6), round(mean + half, 6))


def base_test_score(store: Store, name: str) -> float | None:
    """The base version's test score, recorded on the prefix after the forks (None: not yet)."""
    for e in store.log.read(f"{name}-base", kinds=["version_evaluated"]):
        p = json.loads(e.payload)
        if p["split"] == "test":
            return float(p["score"])
    return None


def experiment_table(store: Store, name: str) -> list[ArmResult]:
    """The table of experiment ``name`` from the store's log alone."""
    rows = []
    for info in store.log.branches():
        if info.name.startswith(f"{name}-"):
            for e in store.log.read(info.name, after_seq=-1):
                rows.append(EventRow(e.branch, e.seq, e.kind, json.loads(e.payload), e.recorded_at))
    return table_from_events(rows, name)


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
    hooks: Hooks | None = None,
) -> list[ArmResult]:
    """Run (or resume) the experiment and return its table (see the module's docstring)."""
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
    Loop(store, task=task, model=model, feedback=feedback(), config=msgspec.structs.replace(config, iterations=0),
         branch=base, hooks=hooks).run()
    existing = {b.name for b in store.log.branches()}
    for arm in arms:
        for seed in seeds:
            branch = f"{name}-{arm}-s{seed}"
            if branch not in existing:
                History.open(store.log, base, blobs=store.blobs).fork(
                    branch, reason=f"experiment {name}: arm {arm}, seed {seed}",
                    overrides={"experiment": name, "arm": arm, "seed": seed, "levers": list(ARMS[arm]), "iterations": iterations},
                )
            cfg = msgspec.structs.replace(config, levers=ARMS[arm], seed=seed, iterations=iterations)
            loop = Loop(store, task=task, model=model, feedback=feedback(), config=cfg, branch=branch, hooks=hooks)
            loop.run()
            evaluate_test(loop)
    # the base version on the test split too, recorded on the prefix after every fork point
    evaluate_test(Loop(store, task=task, model=model, feedback=feedback(), config=msgspec.structs.replace(config, iterations=0),
                       branch=base, hooks=hooks))
    return experiment_table(store, name)
