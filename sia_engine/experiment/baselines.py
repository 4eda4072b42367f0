"""An experiment's baselines, scored and recorded on its prefix (``NAME-base``) after the forks.

Each is a ``baseline_scored`` event, so the table of arms and baselines comes from the log alone
(and from an exported Parquet copy of it). The budget of evaluations is the arms': ``k``
candidates per seed, where an arm scored ``k`` answers per validation episode (its evaluated
versions times the samples per episode). A candidate is one answer, used as the answer to every
episode and scored on all validation episodes; the best on validation is scored on test, once.

- ``random-search``: ``k`` answers drawn uniformly from the task's answer space
  (``Task.random_answer``: for scrna-denoise a configuration from the denoiser family's
  parameter ranges; for lawbench-charge one of its charges, so a candidate names one charge for
  every case).
- ``best-of-k``: ``k`` outputs of the base version sampled at the run's temperature (round-robin
  over the validation episodes' prompts; recorded as trajectories), each used the same way.
- ``reference:NAME``: the task's reference methods on the test split (``sia baseline``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import msgspec

from sia_engine.domain.events import BaselineScored, TrajectoryRecorded
from sia_engine.domain.projection import Recorded, records
from sia_engine.loop.task import DrawsRandomAnswers, Episode, Task, scope_cache

if TYPE_CHECKING:
    from sia_engine.loop.loop import Loop

__all__ = ["Baseline", "test_episodes", "candidates_budget", "random_search", "best_of_k", "reference_methods", "record_baselines", "baselines_to_do", "baselines_from_records"]

BEST_OF_K_SEED = 1_000_003  # best-of-k for seed s samples from seed BEST_OF_K_SEED * (s + 1) (+ episode index)


class Baseline(msgspec.Struct, frozen=True):
    """A baseline beside the arms: its test score per seed (one score for a deterministic method)."""

    method: str
    seeds: tuple[int | None, ...]
    test_scores: tuple[float, ...]
    val_scores: tuple[float | None, ...]
    evaluations: int  # answers scored on validation, per seed
    model_calls: int  # generations, per seed
    note: str = ""

    @property
    def mean(self) -> float:
        return sum(self.test_scores) / len(self.test_scores)


def test_episodes(loop: Loop) -> list[Episode]:
    """The test episodes an experiment scores everything on (arms' heads, the base, the
    baselines): as many as validation uses, the task's first."""
    return loop.task.episodes("test")[: loop.config.val_episodes]


def candidates_budget(evaluations: int, val_episodes: int) -> int:
    """Candidates per seed for a budget of ``evaluations`` answers scored on ``val_episodes``."""
    return max(1, math.ceil(evaluations / max(1, val_episodes)))


def _mean_score(task: Task, answer: str, episodes: Sequence[Episode]) -> float:
    return sum(task.score(ep, answer).score for ep in episodes) / len(episodes)


def choose(task: Task, answers: Sequence[str], val: Sequence[Episode], test: Sequence[Episode]) -> tuple[int, list[float], float]:
    """Each answer's validation score, the index of the best (the first of equals), its test score."""
    scores = [round(_mean_score(task, a, val), 6) for a in answers]
    best = max(range(len(answers)), key=lambda i: (scores[i], -i))
    return best, scores, round(_mean_score(task, answers[best], test), 6)


def random_search(task: Task, val: Sequence[Episode], test: Sequence[Episode], *, experiment: str, k: int, seed: int) -> BaselineScored | None:
    """``k`` uniform random answers (seeded by ``seed``), the best on the ``val`` episodes scored
    on the ``test`` ones; None for a task that cannot draw random answers."""
    if not isinstance(task, DrawsRandomAnswers) or not val or not test:
        return None
    rng = random.Random(f"random-search:{seed}")
    answers = [str(task.random_answer(rng, val[0])) for _ in range(k)]
    best, scores, score = choose(task, answers, val, test)
    return BaselineScored(experiment=experiment, method="random-search", split="test", score=score, seed=seed, val_score=scores[best],
                          evaluations=k * len(val), details={"k": k, "candidates": answers, "val_scores": scores, "chosen": best})


def best_of_k(loop: Loop, *, experiment: str, k: int, seed: int) -> BaselineScored:
    """``k`` outputs of the loop's head (the base version, on the prefix) sampled at the run's
    temperature, round-robin over the validation prompts (recorded as trajectories), each used
    as the answer to every validation episode; the best is scored on test."""
    head = loop.hist.state.head_version
    assert head is not None
    val, test = loop.val, test_episodes(loop)
    prompts = [val[j % len(val)] for j in range(k)]  # candidate j answers validation prompt j (round robin), from seed + j
    events = loop.sample(head, prompts, split="val", seed=BEST_OF_K_SEED * (seed + 1), tag=f"{experiment}-best-of-{k}-s{seed}", n=1)
    trajs = [e for e in events if isinstance(e, TrajectoryRecorded)]
    answers = [t.output for t in trajs]
    best, scores, score = choose(loop.task, answers, val, test)
    return BaselineScored(experiment=experiment, method="best-of-k", split="test", score=score, seed=seed, val_score=scores[best],
                          evaluations=k * len(val), model_calls=len(trajs),
                          details={"k": k, "trajectories": [t.trajectory_id for t in trajs], "val_scores": scores, "chosen": best,
                                   "temperature": loop.config.temperature})


def reference_methods(task: Task, *, experiment: str) -> list[BaselineScored]:
    """The task's reference methods (``sia baseline``) on the test split, one event each."""
    scores = task.reference_baselines("test")
    return [BaselineScored(experiment=experiment, method=f"reference:{name}", split="test", score=float(v), details={"source": "sia baseline"})
            for name, v in sorted(scores.items())]


def baselines_to_do(loop: Loop, *, experiment: str, k: int, seeds: Sequence[int]) -> tuple[bool, list[int], list[int]]:
    """What is not yet recorded at this ``k``: the references (once), and the seeds whose random
    search and whose best-of-k are missing (a longer experiment, with a larger ``k``, searches again)."""
    done: set[tuple[str, int | None, int | None]] = set()
    for r in records(loop.store.log, loop.branch, kinds=["baseline_scored"]):
        if isinstance(r.event, BaselineScored) and r.event.experiment == experiment:
            done.add((r.event.method, r.event.seed, r.event.details.get("k")))
    refs = not any(m.startswith("reference:") for m, _, _ in done)
    return refs, [s for s in seeds if ("random-search", s, k) not in done], [s for s in seeds if ("best-of-k", s, k) not in done]


def record_baselines(loop: Loop, *, experiment: str, k: int, seeds: Sequence[int]) -> None:
    """Score and record what is not yet recorded at this ``k`` (a resumed experiment records
    nothing twice): the references and random searches in one batch, then each seed's best-of-k
    (its samples, then its score). The Ray executor computes the same on workers and records them
    in this order."""
    refs, searches, sampled = baselines_to_do(loop, experiment=experiment, k=k, seeds=seeds)
    todo: list[BaselineScored] = reference_methods(loop.task, experiment=experiment) if refs else []
    for s in searches:
        scope_cache(loop.task, f"{experiment}:random-search:{s}")  # as on a worker of its own (the Ray executor)
        rs = random_search(loop.task, loop.val, test_episodes(loop), experiment=experiment, k=k, seed=s)
        if rs is not None:
            todo.append(rs)
    if todo:
        loop.hist.record(*todo)
    for s in sampled:
        scope_cache(loop.task, f"{experiment}:best-of-k:{s}")
        loop.hist.record(best_of_k(loop, experiment=experiment, k=k, seed=s))


_NOTES = {
    "random-search": "uniform random answers, the best on val",
    "best-of-k": "outputs sampled from the base version, the best on val",
}


def baselines_from_records(recs: Iterable[Recorded], experiment: str) -> list[Baseline]:
    """The experiment's baselines from its prefix's ``baseline_scored`` events (the last per
    method and seed: a longer experiment's searches replace a shorter one's)."""
    last: dict[tuple[str, int | None], BaselineScored] = {}
    for r in sorted((r for r in recs if r.branch == f"{experiment}-base"), key=lambda r: r.seq):
        if isinstance(r.event, BaselineScored) and r.event.experiment == experiment:
            last[(r.event.method, r.event.seed)] = r.event
    by_method: dict[str, list[BaselineScored]] = {}
    for (method, _), b in sorted(last.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])):
        by_method.setdefault(method, []).append(b)
    order = {"best-of-k": 0, "random-search": 1}
    out = []
    for method, bs in sorted(by_method.items(), key=lambda kv: (order.get(kv[0], 2), kv[0])):
        k = bs[0].details.get("k")
        note = _NOTES.get(method, "the task's reference method (sia baseline)")
        out.append(Baseline(method, tuple(b.seed for b in bs), tuple(b.score for b in bs), tuple(b.val_score for b in bs),
                            bs[0].evaluations, bs[0].model_calls, f"{k} candidates per seed, {note}" if k is not None else note))
    return out
