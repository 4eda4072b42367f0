"""Recorded replay: recompute everything that follows from a branch's recorded outputs.

Hashes catch a changed byte; they cannot catch a history rewritten with every hash recomputed.
Recorded replay does: it re-reduces the branch (version ids and scaffold hashes are recomputed by
the reducer), re-scores every recorded output with the task's own scorer (score and failure
class), recomputes every evaluation's score from its trajectories under the recorded protocol,
re-runs the rule policy on each iteration's recorded trajectories and compares its verdict, and
re-applies the gate to every decision. The first disagreement is ``ReplayDivergence(seq, field,
expected, got)``: ``expected`` is what the recomputation gives, ``got`` what the log says.

Nothing is generated and no model is loaded; re-scoring runs the task's scorer (for
scrna-denoise, the sandboxed denoiser, once per distinct configuration).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec

from replay.errors import ReplayError
from sia_engine.domain.events import (
    Event,
    FeedbackVerdict,
    IterationStarted,
    TrajectoryRecorded,
    VersionAccepted,
    VersionEvaluated,
    VersionRejected,
)
from sia_engine.domain.projection import Recorded, records
from sia_engine.domain.state import AgentState, apply, state_hash
from sia_engine.errors import ReducerError
from sia_engine.loop.feedback.rule import Context, RulePolicy
from sia_engine.loop.loop import evaluation_score, failure_classes, gate_accepts
from sia_engine.loop.task import Episode, Score, ScoresConcurrently, Task
from store import EventLog, Store

__all__ = ["ReplayDivergence", "ReplayReport", "replay_recorded", "replay_records"]

TOLERANCE = 1e-9


class ReplayDivergence(ReplayError):
    def __init__(self, seq: str, field: str, expected: Any, got: Any) -> None:
        self.seq = seq
        self.field = field
        self.expected = expected
        self.got = got
        super().__init__(f"replay diverges at {seq}: {field} recomputes to {expected!r}, the log says {got!r}")


class ReplayReport(msgspec.Struct, frozen=True):
    branch: str
    n_events: int
    rescored: int  # trajectories re-scored by the task's scorer
    evaluations: int  # evaluation scores recomputed from their trajectories
    verdicts: int  # rule-policy verdicts recomputed
    decisions: int  # gate decisions recomputed
    state_hash: str
    skipped: tuple[str, ...] = ()  # what could not be recomputed, and why
    choices: int = 0  # model (llm) verdicts whose choice was recomputed from the recorded option scores


def _differs(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is not b
    return abs(a - b) > TOLERANCE


def _verdict_key(v: FeedbackVerdict) -> dict[str, Any]:
    plan = v.training_plan
    return {"lever": v.lever, "patch": msgspec.to_builtins(v.patch),
            "training_plan": None if plan is None else {"trajectory_ids": list(plan.trajectory_ids), "recipe": plan.effective_recipe}}


def _context(state: AgentState, train_trajs: list[TrajectoryRecorded], task: Task | None, episodes: dict[str, Episode]) -> Context | None:
    """What the Feedback Agent saw when the iteration's verdict was made (None: no task here, or
    not at a verdict's point in the history)."""
    if task is None or state.run is None or state.head_version is None or state.phase != "started":
        return None
    cfg = state.run.config
    return Context(state, state.head_version, tuple(train_trajs), failure_classes(train_trajs, task, episodes), state.run.levers,
                   state.iteration, recipe=str(cfg.get("recipe", "auto")), rft_top=float((cfg.get("lora") or {}).get("rft_top", 0.0)))


def _check_llm_choice(where: str, e: FeedbackVerdict, ctx: Context | None, task: Task | None) -> None:
    """A model's constrained choice, recomputed: each stage's chosen option from its recorded
    scores and the tie rule; with the task, the options rebuilt from the iteration (the same
    labels), the rule policy's preference recomputed, and the verdict equal to the option chosen."""
    from sia_engine.loop.feedback.model import (
        choose_index,
        iteration_options,
        preferred,
    )

    rule = RulePolicy()
    rule_verdict = rule.decide(ctx, task).verdicts[-1] if ctx is not None and task is not None else None
    options = iteration_options(ctx, task, rule) if ctx is not None and task is not None else None
    last = None
    for stage in e.choice.stages:
        opts = None if options is None else options[stage.stage]
        if opts is not None and [o.label for o in opts] != [r.label for r in stage.options]:
            raise ReplayDivergence(where, "llm options", [o.label for o in opts], [r.label for r in stage.options])
        prefer = preferred(stage.stage, opts, rule_verdict) if opts is not None and rule_verdict is not None else stage.preferred
        index, _ = choose_index(stage.options, stage.excluded, prefer)
        if index != stage.chosen:
            raise ReplayDivergence(where, "llm choice", index, stage.chosen)
        last = None if opts is None else opts[index]
    if last is not None:
        plan = e.training_plan
        got = (e.lever, None if last.free_text else msgspec.to_builtins(e.patch), None if plan is None else list(plan.trajectory_ids))
        want = (last.lever, None if last.free_text else msgspec.to_builtins(last.patch), None if last.plan is None else list(last.plan.trajectory_ids))
        if last.free_text:  # the model's own text: only where it goes is the engine's
            got = (got[0], [op.path for op in e.patch], got[2])
            want = (want[0], ["/system_prompt"] if e.patch else [], want[2])
        if got != want and not (last.free_text and e.lever == "none"):
            raise ReplayDivergence(where, "llm verdict", want, got)


def _prescore(task: Task, episodes: dict[str, Episode], trajs: list[TrajectoryRecorded]) -> dict[tuple[str, str], Score]:
    """Each distinct (episode, output) scored once. A task whose scorer says it may run
    concurrently (``concurrent_scoring``: scrna-denoise's runs each configuration in a sandboxed
    process) is scored on every core; the comparison with the log stays in log order."""
    todo = list(dict.fromkeys((t.episode_id, t.output) for t in trajs if t.episode_id in episodes))

    def one(pair: tuple[str, str]) -> Score:
        return task.score(episodes[pair[0]], pair[1])

    workers = min(os.cpu_count() or 1, 8) if isinstance(task, ScoresConcurrently) and task.concurrent_scoring else 1
    if workers > 1 and len(todo) > 1:
        with ThreadPoolExecutor(workers) as pool:
            return dict(zip(todo, pool.map(one, todo), strict=True))
    return {pair: one(pair) for pair in todo}


def replay_recorded(store: Store | EventLog, branch: str, task: Task | None) -> ReplayReport:
    """Recompute ``branch`` of a store (or an event log) from its recorded outputs; raises
    ``ReplayDivergence`` at the first disagreement. Without a ``task``, only what needs no scorer
    is recomputed (said in ``skipped``)."""
    log: EventLog = store.log if isinstance(store, Store) else store
    return replay_records(branch, list(records(log, branch)), task)


def replay_records(branch: str, recs: Sequence[Recorded], task: Task | None) -> ReplayReport:
    """``replay_recorded`` over a branch's records already read and decoded (the audit reads
    each branch once for all its sections)."""
    r = _Replayer(task)
    if task is not None:
        r.scores = _prescore(task, r.episodes, [x.event for x in recs if isinstance(x.event, TrajectoryRecorded)])
    for rec in recs:
        r.check(rec.where, rec.event)
        try:
            r.state = apply(r.state, rec.event)
        except ReducerError as err:
            raise ReplayDivergence(rec.where, "reducer", "an event consistent with the history", str(err)) from None
    skipped = () if task is not None else ("scores, failure classes, rule verdicts and the model's options: the task is not available here",)
    return ReplayReport(branch, len(recs), state_hash=state_hash(r.state), skipped=skipped, **r.counts)


class _Replayer:
    """What recorded replay carries from event to event: the state so far, the iteration's
    trajectories, the scores recomputed, and what it has checked."""

    def __init__(self, task: Task | None) -> None:
        self.task = task
        self.state = AgentState()
        self.episodes = {e.id: e for split in ("train", "val", "test") for e in task.episodes(split)} if task else {}
        self.scores: dict[tuple[str, str], Score] = {}
        self.train: list[TrajectoryRecorded] = []
        self.val: list[TrajectoryRecorded] = []
        self.counts = {"rescored": 0, "evaluations": 0, "verdicts": 0, "choices": 0, "decisions": 0}

    def check(self, where: str, e: Event) -> None:
        """Recompute what ``e`` records, from the history before it."""
        if isinstance(e, IterationStarted):
            self.train = []
        elif isinstance(e, TrajectoryRecorded):
            (self.train if e.split == "train" else self.val).append(e)
            self._rescore(where, e)
        elif isinstance(e, VersionEvaluated):
            self._evaluation(where, e)
        elif isinstance(e, FeedbackVerdict) and e.policy == "rule" and e.valid:
            ctx = _context(self.state, self.train, self.task, self.episodes)
            if ctx is not None and self.task is not None:
                [verdict] = RulePolicy().decide(ctx, self.task).verdicts[-1:]
                if _verdict_key(verdict) != _verdict_key(e):
                    raise ReplayDivergence(where, "rule verdict", _verdict_key(verdict), _verdict_key(e))
                self.counts["verdicts"] += 1
        elif isinstance(e, FeedbackVerdict) and e.policy == "llm" and e.valid and e.choice:
            _check_llm_choice(where, e, _context(self.state, self.train, self.task, self.episodes), self.task)
            self.counts["choices"] += 1
        elif isinstance(e, (VersionAccepted, VersionRejected)):
            self._decision(where, e)

    def _rescore(self, where: str, e: TrajectoryRecorded) -> None:
        if self.task is None:
            return
        if e.episode_id not in self.episodes:
            raise ReplayDivergence(where, "episode_id", "an episode of the task", e.episode_id)
        s = self.scores[(e.episode_id, e.output)]
        if _differs(s.score, e.score):
            raise ReplayDivergence(where, "score", s.score, e.score)
        if e.failure and s.failure != e.failure:
            raise ReplayDivergence(where, "failure", s.failure, e.failure)
        self.counts["rescored"] += 1

    def _evaluation(self, where: str, e: VersionEvaluated) -> None:
        mine = [t for t in self.val if t.version_id == e.version_id]
        self.val = []
        if mine:
            again = evaluation_score(mine, str(e.protocol.get("mode", "mean")))[0]
            if _differs(again, e.score):
                raise ReplayDivergence(where, "evaluation score", again, e.score)
            self.counts["evaluations"] += 1

    def _decision(self, where: str, e: VersionAccepted | VersionRejected) -> None:
        state = self.state
        head = state.head_version
        cand = state.versions.get(e.version_id)
        margin = float((state.run.config if state.run else {}).get("margin", 0.0))
        score = cand.score("val") if cand else None
        if score is not None:
            accept = gate_accepts(score, head.score("val") if head else None, margin)
            if accept != isinstance(e, VersionAccepted):
                raise ReplayDivergence(where, "gate decision", "accepted" if accept else "rejected",
                                       "accepted" if isinstance(e, VersionAccepted) else "rejected")
            self.counts["decisions"] += 1
