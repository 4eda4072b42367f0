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

import functools
import json
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from sia_engine.domain.history import fork
from sia_engine.errors import SiaError
from sia_engine.experiment.baselines import (
    Baseline,
    EventRow,
    baselines_from_events,
    candidates_budget,
    record_baselines,
    test_episodes,
)
from sia_engine.loop.feedback.rule import FeedbackAgent
from sia_engine.loop.hooks import Hooks
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.loop.task import Task
from sia_engine.models.protocol import Model
from store import EventLog, Store

__all__ = ["ARMS", "ArmResult", "Budget", "ExperimentResult", "Paired", "paired", "comparisons", "arm_summary", "parse_budget", "run_experiment", "evaluate_test",
           "experiment_table", "experiment_result", "experiment_rows", "experiment_names", "table_from_events", "result_from_events", "EventRow"]

ARMS: dict[str, tuple[str, ...]] = {"scaffold": ("scaffold",), "weights": ("weights",), "both": ("scaffold", "weights")}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}")


class Budget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What one arm may spend on its own branch; an arm stops starting iterations once any is
    spent (an iteration under way finishes). None: no limit."""

    model_calls: int | None = None  # generations (training and validation rollouts; test rollouts are not counted)
    train_steps: int | None = None  # LoRA steps
    wall_s: float | None = None  # seconds from the fork

    def spent(self, used: dict[str, float]) -> str:
        """The first limit ``used`` has reached (``""``: none)."""
        for key, limit in (("model_calls", self.model_calls), ("train_steps", self.train_steps), ("wall_s", self.wall_s)):
            if limit is not None and used[key] >= limit:
                return key
        return ""


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
    evaluations: int  # answers scored on validation for this arm (the base's shared evaluation included)
    model_calls: int  # generations on the branch: training and validation rollouts (test rollouts not counted)
    train_steps: int  # LoRA steps over all adapters trained on the branch
    wall_s: float  # from the fork to the last event on the branch
    stopped: str = ""  # the budget limit that ended the arm early ("": it ran its iterations)


@dataclass
class _Arm:
    arm: str
    seed: int
    branch: str
    overrides: dict[str, Any]
    events: list[EventRow] = field(default_factory=list)


def _is_test(e: EventRow) -> bool:
    """A test rollout or the test score (the arm's last step, outside its budget)."""
    return e.payload.get("split") == "test" or str(e.payload.get("action_id", "")).startswith("test-")


def spent(events: Sequence[EventRow]) -> dict[str, float]:
    """Model calls, LoRA steps and wall seconds used on a branch's own ``events`` (in seq order),
    leaving out its test rollouts and test score."""
    events = [e for e in events if not _is_test(e)]
    calls = sum(1 for e in events if e.kind == "action_taken" and e.payload.get("actor") == "model")
    steps = sum(len(e.payload.get("curve", ())) or int(e.payload.get("hyper", {}).get("steps", 0)) for e in events if e.kind == "adapter_checkpointed")
    wall = (events[-1].recorded_at - events[0].recorded_at).total_seconds() if events else 0.0
    return {"model_calls": calls, "train_steps": steps, "wall_s": round(wall, 3)}


def _base_scores(base: Sequence[EventRow]) -> tuple[float | None, float | None, int]:
    """The prefix's own events (in seq order) -> the base version's validation score, its test
    score (recorded after the forks), and the answers its validation evaluation scored (best-of-k's
    samples, recorded later, are not the base's evaluation)."""
    val = test = None
    evals = 0
    for e in base:
        if e.kind == "version_evaluated":
            if e.payload["split"] == "val" and val is None:
                val = float(e.payload["score"])
            elif e.payload["split"] == "test" and test is None:
                test = float(e.payload["score"])
        elif e.kind == "trajectory_recorded" and e.payload["split"] == "val" and val is None:
            evals += 1
    return val, test, evals


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
            arms[branch] = _Arm(str(o["arm"]), int(o["seed"]), branch, o, evs)
    base_val, _, base_evals = _base_scores(by_branch.get(f"{name}-base", []))
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
        used = spent(a.events)
        iterations = kinds.count("iteration_started")
        budget = a.overrides.get("budget")
        stopped = msgspec.convert(budget, Budget).spent(used) if budget and iterations < int(a.overrides.get("iterations", 0)) else ""
        out.append(ArmResult(
            arm=a.arm, seed=a.seed, branch=a.branch, test_score=test, val_score=val, iterations=iterations, levers_used=levers,
            candidates=kinds.count("scaffold_patched") + kinds.count("adapter_checkpointed"), accepted=kinds.count("version_accepted"),
            evaluations=base_evals + sum(1 for e in a.events if e.kind == "trajectory_recorded" and e.payload["split"] == "val"),
            model_calls=int(used["model_calls"]), train_steps=int(used["train_steps"]), wall_s=used["wall_s"], stopped=stopped,
        ))
    return out


class ExperimentResult(msgspec.Struct, frozen=True):
    """Everything an experiment reports, computed from its events alone."""

    name: str
    arms: tuple[ArmResult, ...]
    baselines: tuple[Baseline, ...]
    base_val: float | None
    base_test: float | None  # the base version on the test split (recorded after the forks)


def result_from_events(rows: Iterable[EventRow], name: str) -> ExperimentResult:
    rows = list(rows)
    base_val, base_test, _ = _base_scores(sorted((r for r in rows if r.branch == f"{name}-base"), key=lambda r: r.seq))
    return ExperimentResult(name, tuple(table_from_events(rows, name)), tuple(baselines_from_events(rows, name)), base_val, base_test)


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

    def describe(self) -> str:
        """One line: the differences, their mean and interval, and what the interval says."""
        ci = "" if self.low is None else f", 95% interval [{self.low:+.3f}, {self.high:+.3f}]"
        verdict = (f"{self.a} is better" if self.low is not None and self.low > 0 else f"{self.a} is worse" if self.excludes_zero
                   else "no difference shown")
        return (f"{self.a} vs {self.b}, seed by seed: differences {', '.join(f'{x:+.3f}' for x in self.differences)}; "
                f"mean {self.mean:+.3f}{ci}: {verdict}")


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


def comparisons(result: ExperimentResult) -> dict[str, Paired | None]:
    """The comparisons an experiment reports, each arm against scaffold-only, seed by seed:
    both (SIA's claim) and weights (None: no seed scored on both arms)."""
    return {a: paired(result.arms, a, "scaffold") for a in ("both", "weights")}


def arm_summary(result: ExperimentResult) -> dict[str, dict[str, Any]]:
    """Mean and spread of each arm's test scores, whether the mean beats each search baseline and the base."""
    out: dict[str, dict[str, Any]] = {}
    searches = [b for b in result.baselines if b.method in ("random-search", "best-of-k")]
    for arm in dict.fromkeys(r.arm for r in result.arms):
        scores = [r.test_score for r in result.arms if r.arm == arm and r.test_score is not None]
        if scores:
            mean = statistics.fmean(scores)
            out[arm] = {"mean": round(mean, 6), "sd": round(statistics.stdev(scores), 6) if len(scores) > 1 else 0.0, "seeds": len(scores),
                        "beats": {b.method: mean > b.mean for b in searches},
                        "beats_base": None if result.base_test is None else mean > result.base_test}
    return out


def experiment_names(log: EventLog) -> list[str]:
    """Names of the experiments recorded in ``log`` (from their arms' ``branch_forked`` events)."""
    names: dict[str, None] = {}
    for info in log.branches():
        if info.base_branch is not None and info.base_branch.endswith("-base"):
            first = log.at(info.name, 0)
            if first.kind == "branch_forked":
                name = json.loads(first.payload).get("overrides", {}).get("experiment")
                if isinstance(name, str) and info.base_branch == f"{name}-base":
                    names[name] = None
    return list(names)


def experiment_rows(log: EventLog, name: str) -> list[EventRow]:
    """The own events of experiment ``name``'s branches (its prefix and its arms)."""
    return [r for info in log.branches() if info.name.startswith(f"{name}-") for r in _own_rows(log, info.name)]


def _own_rows(log: EventLog, branch: str) -> list[EventRow]:
    """``branch``'s own events (not its ancestry's), in seq order."""
    return [EventRow(e.branch, e.seq, e.kind, json.loads(e.payload), e.recorded_at) for e in log.read(branch, after_seq=-1)]


def experiment_table(store: Store, name: str) -> list[ArmResult]:
    """The table of experiment ``name``'s arms from the store's log alone."""
    return table_from_events(experiment_rows(store.log, name), name)


def experiment_result(store: Store, name: str) -> ExperimentResult:
    """Arms, baselines and the base version's scores of experiment ``name``, from the log alone."""
    return result_from_events(experiment_rows(store.log, name), name)


def _out_of_budget(log: EventLog, branch: str, budget: Budget) -> bool:
    """Asked before each iteration of an arm: has its branch spent one of its limits?"""
    return bool(budget.spent(spent(_own_rows(log, branch))))


def _prefix_seq(store: Store, base: str) -> int:
    """Where the arms fork: the base version's validation score, the prefix's last event before
    anything the arms may not see (its test score, the baselines)."""
    for e in store.log.read(base, kinds=["version_evaluated"]):
        if json.loads(e.payload)["split"] == "val":
            return e.seq
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
    for arm in arms:
        for seed in seeds:
            branch = f"{name}-{arm}-s{seed}"
            info = existing.get(branch)
            if info is None:
                overrides: dict[str, object] = {"experiment": name, "arm": arm, "seed": seed, "levers": list(ARMS[arm]), "iterations": iterations}
                if budget is not None:
                    overrides["budget"] = {k: v for k, v in msgspec.to_builtins(budget).items() if v is not None}
                fork(store.log, branch, source=base, at_seq=at, blobs=store.blobs, overrides=overrides,
                     reason=f"experiment {name}: arm {arm}, seed {seed}")
            elif info.base_branch != base:
                raise SiaError(f"branch {branch!r} exists and is not a fork of {base!r}: choose another experiment name")
            cfg = msgspec.structs.replace(config, levers=ARMS[arm], seed=seed, iterations=iterations)
            loop = Loop(store, task=task, model=model, feedback=feedback(), config=cfg, branch=branch, hooks=hooks)

            loop.run(stop=None if budget is None else functools.partial(_out_of_budget, store.log, branch, budget))
            evaluate_test(loop)
    # the base version on the test split, then the baselines: on the prefix, after every fork point
    on_base = Loop(store, task=task, model=model, feedback=feedback(), config=prefix, branch=base, hooks=hooks)
    evaluate_test(on_base)
    if baselines:
        table = experiment_table(store, name)
        k = max((candidates_budget(r.evaluations, len(on_base.val)) for r in table), default=1)
        record_baselines(on_base, experiment=name, k=k, seeds=seeds)
    return experiment_result(store, name)
