"""An experiment's table, from its events alone: projections over each of its branches' own events.

The same records come from the log (``experiment_records``) or from a Parquet export
(``Recorded.from_row``), so the table is the same from either. A branch is an arm when its first
event is a ``branch_forked`` whose overrides name the experiment (``BranchForked.arm()``). What an
arm spent leaves out its test step (the test rollouts and the test score, outside its budget): a
trajectory or evaluation of split ``test``, and the actions a test trajectory names.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec

from sia_engine.domain.events import (
    ActionTaken,
    BaselineScored,
    AdapterCheckpointed,
    BranchForked,
    RolledBack,
    TrajectoryRecorded,
    VersionAccepted,
    VersionEvaluated,
)
from sia_engine.domain.payloads import ArmOverrides
from sia_engine.domain.projection import Projection, Recorded, fold, records
from sia_engine.errors import InvalidPayload
from sia_engine.experiment.artifact import METHOD as ARTIFACT
from sia_engine.experiment.baselines import Baseline, baselines_from_records
from store import EventLog, Store

__all__ = ["ARMS", "ARM_FEEDBACK", "ArmResult", "ExperimentResult", "Spending", "ArmTable", "BaseScores", "spent", "table_from_records",
           "result_from_records", "experiment_names", "experiment_records", "experiment_table", "experiment_result", "Paired",
           "paired", "comparisons", "arm_summary"]

ARMS: dict[str, tuple[str, ...]] = {"scaffold": ("scaffold",), "weights": ("weights",), "both": ("scaffold", "weights"),
                                    "both-bandit": ("scaffold", "weights")}
ARM_FEEDBACK: dict[str, str] = {"both-bandit": "bandit"}  # an arm's Feedback Agent where it is not the experiment's own


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
    scored: int = 0  # answers the arm itself scored: its training and validation trajectories since its fork
    artifact_test: float | None = None  # the best artifact: the best of its distinct answers on validation, scored on test
    artifact_val: float | None = None
    artifact_candidates: int = 0  # its distinct answers

    def measure(self, which: str) -> float | None:
        """The arm's test score by ``which`` measure: ``policy`` (its head's mean sampled
        proposal) or ``artifact`` (its best artifact)."""
        return self.test_score if which == "policy" else self.artifact_test


class ExperimentResult(msgspec.Struct, frozen=True):
    """Everything an experiment reports, computed from its events alone."""

    name: str
    arms: tuple[ArmResult, ...]
    baselines: tuple[Baseline, ...]
    base_val: float | None
    base_test: float | None  # the base version on the test split (recorded after the forks)


class _Spent(msgspec.Struct):
    model_actions: list[tuple[str, datetime]] = []  # (action id, when) of each model call
    steps: int = 0
    times: list[tuple[datetime, str | None]] = []  # every event's time, with its action id (None: not an action)
    test_actions: set[str] = set()
    first: datetime | None = None


class Spending(Projection[_Spent]):
    """Model calls, LoRA steps and wall seconds a branch's own events used, its test step left out
    (``spent`` reads the value)."""

    kinds = None  # every kind: the wall time runs from the branch's first event to its last

    def initial(self) -> _Spent:
        return _Spent(model_actions=[], times=[], test_actions=set())

    def apply(self, s: _Spent, r: Recorded) -> _Spent:
        e = r.event
        if isinstance(e, (TrajectoryRecorded, VersionEvaluated)) and e.split == "test":
            if isinstance(e, TrajectoryRecorded):
                s.test_actions.update(e.action_ids)
            return s
        if isinstance(e, ActionTaken):
            if e.actor == "model":
                s.model_actions.append((e.action_id, r.recorded_at))
            s.times.append((r.recorded_at, e.action_id))
            return s
        if isinstance(e, AdapterCheckpointed):
            s.steps += len(e.curve) or int(e.hyper.get("steps", 0))
        s.times.append((r.recorded_at, None))
        return s


def spent(s: _Spent) -> dict[str, float]:
    """What ``Spending`` counted, as the budget reads it."""
    times = [t for t, aid in s.times if aid is None or aid not in s.test_actions]
    wall = (times[-1] - times[0]).total_seconds() if times else 0.0
    calls = sum(1 for aid, _ in s.model_actions if aid not in s.test_actions)
    return {"model_calls": calls, "train_steps": s.steps, "wall_s": round(wall, 3)}


class _Arm(msgspec.Struct):
    overrides: ArmOverrides | None = None
    head: str | None = None  # the last version accepted or rolled back to (None: still the base)
    iterations: int = 0
    levers: dict[str, None] = {}
    candidates: int = 0
    accepted: int = 0
    val_trajectories: int = 0
    train_trajectories: int = 0
    evaluations: list[VersionEvaluated] = []
    artifact: BaselineScored | None = None


class ArmTable(Projection[_Arm]):
    """One arm's row, but for what the base and the budget add (``table_from_records``)."""

    kinds = frozenset({"branch_forked", "iteration_started", "scaffold_patched", "adapter_checkpointed", "version_accepted",
                       "rolled_back", "version_evaluated", "trajectory_recorded", "baseline_scored"})

    def initial(self) -> _Arm:
        return _Arm(levers={}, evaluations=[])

    def apply(self, a: _Arm, r: Recorded) -> _Arm:
        e = r.event
        kind = r.kind
        if isinstance(e, BranchForked) and a.overrides is None and not a.iterations:
            a.overrides = e.arm()
        elif kind == "iteration_started":
            a.iterations += 1
        elif kind in ("scaffold_patched", "adapter_checkpointed"):
            a.levers["scaffold" if kind == "scaffold_patched" else "weights"] = None
            a.candidates += 1
        elif isinstance(e, VersionAccepted):
            a.head, a.accepted = e.version_id, a.accepted + 1
        elif isinstance(e, RolledBack):
            a.head = e.to_version
        elif isinstance(e, VersionEvaluated):
            a.evaluations.append(e)
        elif isinstance(e, TrajectoryRecorded) and e.split in ("val", "train"):
            if e.split == "val":
                a.val_trajectories += 1
            else:
                a.train_trajectories += 1
        elif isinstance(e, BaselineScored) and e.method == ARTIFACT:
            a.artifact = e
        return a


class _Base(msgspec.Struct):
    val: float | None = None
    test: float | None = None
    evaluations: int = 0


class BaseScores(Projection[_Base]):
    """The prefix's base version: its validation score, its test score (recorded after the forks),
    and the answers its validation evaluation scored (best-of-k's samples, recorded later, are not
    the base's evaluation)."""

    kinds = frozenset({"version_evaluated", "trajectory_recorded"})

    def initial(self) -> _Base:
        return _Base()

    def apply(self, b: _Base, r: Recorded) -> _Base:
        e = r.event
        if isinstance(e, VersionEvaluated):
            if e.split == "val" and b.val is None:
                b.val = e.score
            elif e.split == "test" and b.test is None:
                b.test = e.score
        elif isinstance(e, TrajectoryRecorded) and e.split == "val" and b.val is None:
            b.evaluations += 1
        return b


def _row(branch: str, a: _Arm, used: dict[str, float], base: _Base) -> ArmResult:
    o = a.overrides
    assert o is not None
    val = base.val if a.head is None else None  # nothing accepted: the head is still the base
    test = None
    for e in a.evaluations:
        if a.head is None or e.version_id == a.head:
            if e.split == "test":
                test = e.score
            elif e.split == "val" and a.head is not None:
                val = e.score
    stopped = o.budget.spent(used) if o.budget is not None and a.iterations < o.iterations else ""
    return ArmResult(
        arm=o.arm, seed=o.seed, branch=branch, test_score=test, val_score=val, iterations=a.iterations, levers_used=tuple(a.levers),
        candidates=a.candidates, accepted=a.accepted, evaluations=base.evaluations + a.val_trajectories,
        model_calls=int(used["model_calls"]), train_steps=int(used["train_steps"]), wall_s=used["wall_s"], stopped=stopped,
        scored=a.train_trajectories + a.val_trajectories, artifact_test=None if a.artifact is None else a.artifact.score,
        artifact_val=None if a.artifact is None else a.artifact.val_score,
        artifact_candidates=0 if a.artifact is None else int(a.artifact.details.get("candidates", 0)),
    )


def _by_branch(recs: Iterable[Recorded]) -> dict[str, list[Recorded]]:
    out: dict[str, list[Recorded]] = {}
    for r in recs:
        out.setdefault(r.branch, []).append(r)
    for rs in out.values():
        rs.sort(key=lambda r: r.seq)
    return out


def table_from_records(recs: Iterable[Recorded] | Mapping[str, Sequence[Recorded]], name: str) -> list[ArmResult]:
    """Experiment ``name``'s table from each of its branches' own records."""
    by_branch = dict(recs) if isinstance(recs, Mapping) else _by_branch(recs)
    [base] = fold([BaseScores()], by_branch.get(f"{name}-base", []))
    rows = []
    for branch, own in by_branch.items():
        first = own[0].event if own else None
        arm = first.arm() if isinstance(first, BranchForked) else None
        if arm is None or arm.experiment != name:
            continue
        a, s = fold([ArmTable(), Spending()], own)
        rows.append(_row(branch, a, spent(s), base))
    return sorted(rows, key=lambda r: (list(ARMS).index(r.arm) if r.arm in ARMS else 99, r.seed))


def result_from_records(recs: Iterable[Recorded] | Mapping[str, Sequence[Recorded]], name: str) -> ExperimentResult:
    by_branch = dict(recs) if isinstance(recs, Mapping) else _by_branch(recs)
    [base] = fold([BaseScores()], by_branch.get(f"{name}-base", []))
    baselines = baselines_from_records(by_branch.get(f"{name}-base", []), name)
    return ExperimentResult(name, tuple(table_from_records(by_branch, name)), tuple(baselines), base.val, base.test)


def experiment_names(own: Mapping[str, Sequence[Recorded]]) -> list[str]:
    """Names of the experiments among branches' own records (from their arms' ``branch_forked``;
    a fork whose overrides name an experiment but do not say an arm is not one of them)."""
    names: dict[str, None] = {}
    for rs in own.values():
        first = rs[0].event if rs else None
        if not isinstance(first, BranchForked):
            continue
        try:
            arm = first.arm()
        except InvalidPayload:
            continue
        if arm is not None and first.source_branch == f"{arm.experiment}-base":
            names[arm.experiment] = None
    return list(names)


def experiment_records(log: EventLog, name: str | None = None) -> dict[str, list[Recorded]]:
    """The own records of experiment ``name``'s branches (its prefix and its arms); None: of
    every branch that belongs to an experiment, or may (prefixes and forks of a prefix)."""
    out = {}
    for info in log.branches():
        mine = info.name.startswith(f"{name}-") if name is not None else (
            info.name.endswith("-base") or (info.base_branch is not None and info.base_branch.endswith("-base")))
        if mine:
            out[info.name] = list(records(log, info.name, own=True))
    return out


def experiment_table(store: Store, name: str) -> list[ArmResult]:
    """The table of experiment ``name``'s arms from the store's log alone."""
    return table_from_records(experiment_records(store.log, name), name)


def experiment_result(store: Store, name: str) -> ExperimentResult:
    """Arms, baselines and the base version's scores of experiment ``name``, from the log alone."""
    return result_from_records(experiment_records(store.log, name), name)


_MEASURES = {"policy": "policy: the head's mean proposal", "artifact": "best artifact"}

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
    measure: str = "policy"  # ``ArmResult.measure``: policy or artifact

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def describe(self) -> str:
        """One line: the differences, their mean and interval, and what the interval says."""
        ci = "" if self.low is None else f", 95% interval [{self.low:+.3f}, {self.high:+.3f}]"
        verdict = (f"{self.a} is better" if self.low is not None and self.low > 0 else f"{self.a} is worse" if self.excludes_zero
                   else "no difference shown")
        return (f"{self.a} vs {self.b} ({_MEASURES[self.measure]}), seed by seed: differences {', '.join(f'{x:+.3f}' for x in self.differences)}; "
                f"mean {self.mean:+.3f}{ci}: {verdict}")


def paired(table: Sequence[ArmResult], a: str = "both", b: str = "scaffold", measure: str = "policy") -> Paired | None:
    """Arm ``a`` against arm ``b`` by ``measure`` (``ArmResult.measure``) on the seeds both were
    scored on (None: no such seed)."""
    sa = {r.seed: v for r in table if r.arm == a and (v := r.measure(measure)) is not None}
    sb = {r.seed: v for r in table if r.arm == b and (v := r.measure(measure)) is not None}
    seeds = tuple(sorted(sa.keys() & sb.keys()))
    if not seeds:
        return None
    d = tuple(round(sa[x] - sb[x], 6) for x in seeds)
    n = len(d)
    mean = sum(d) / n
    if n < 2:
        return Paired(a, b, seeds, d, round(mean, 6), None, None, measure)
    sd = (sum((x - mean) ** 2 for x in d) / (n - 1)) ** 0.5
    half = (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * sd / n**0.5
    return Paired(a, b, seeds, d, round(mean, 6), round(mean - half, 6), round(mean + half, 6), measure)


def comparisons(result: ExperimentResult) -> dict[str, Paired | None]:
    """The comparisons an experiment reports, seed by seed, on both measures: both against
    scaffold-only (SIA's claim) and against weights-only, and weights against scaffold-only
    (None: no seed scored on both arms). Keys: ``A-vs-B:MEASURE``."""
    arms = {r.arm for r in result.arms}
    pairs = (("both", "scaffold"), ("both", "weights"), ("weights", "scaffold"), ("both-bandit", "scaffold"), ("both-bandit", "weights"),
             ("both-bandit", "both"))
    return {f"{a}-vs-{b}:{m}": paired(result.arms, a, b, m) for m in ("policy", "artifact") for a, b in pairs
            if a in arms or a in ("both", "weights")}


def arm_summary(result: ExperimentResult) -> dict[str, dict[str, Any]]:
    """Each arm's mean and spread on both measures. Like with like: the policy (the head's mean
    sampled proposal) against the base policy; the best artifact against the searches' best
    (random search, best-of-k), which choose theirs the same way from as many candidates."""
    out: dict[str, dict[str, Any]] = {}
    searches = [b for b in result.baselines if b.method in ("random-search", "best-of-k")]
    for arm in dict.fromkeys(r.arm for r in result.arms):
        row: dict[str, Any] = {}
        for m in ("policy", "artifact"):
            scores = [v for r in result.arms if r.arm == arm and (v := r.measure(m)) is not None]
            if not scores:
                continue
            mean = statistics.fmean(scores)
            row[m] = {"mean": round(mean, 6), "sd": round(statistics.stdev(scores), 6) if len(scores) > 1 else 0.0, "seeds": len(scores)}
            if m == "policy":
                row[m]["beats_base"] = None if result.base_test is None else mean > result.base_test
            else:
                row[m]["beats"] = {b.method: mean > b.mean for b in searches}
        if row:
            out[arm] = row
    return out
