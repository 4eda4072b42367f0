"""Recorded replay: run the loop's own step functions against a branch's recorded outputs and
scores, and compare every event they would record with the log.

Hashes catch a changed byte; they cannot catch a history rewritten with every hash recomputed.
Recorded replay does, the way Temporal's replayer runs the workflow code itself against its
history: the loop (``sia_engine.loop.loop.Loop``) is built from the run's recorded settings and
steps through the branch (rollouts, the Feedback Agent's verdict, the lever, the evaluation, the
gate; an experiment's test evaluations and baselines), served by stand-ins (``replay.stand_ins``):
a model that answers with the recorded outputs and option scores and hands back the recorded
adapters, a task that scores each output as recorded, and a history that compares each event
the loop records, field by field, with the log's next one. Events the loop does not make (the
run's start, a fork, new settings, a rollback) are applied as recorded. Separately, every output
is re-scored with the task's own scorer. The first disagreement is ``ReplayDivergence(seq, field,
expected, got)``: ``expected`` is what the recomputation gives, ``got`` what the log says.

What that proves: every verdict follows from its iteration (rule, model or later policy), every
scaffold patch from its verdict, every adapter's data, recipe, seed and settings from its
training plan, and every evaluation and gate decision from its outputs. An adapter's weights are
proven only with ``retrain`` (a model to train them again: the blob must come out byte for byte).

Nothing is generated. Without the task (or the store's blobs) only what needs neither is
recomputed: the reducer, evaluation scores and gate decisions (said in ``skipped``).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from replay.compare import compare
from replay.errors import RebuildMismatch, ReplayError
from replay.reduced import ReplayReport, differs, environment_notes, reduce_and_gate
from replay.stand_ins import (
    AdapterDiffers,
    CheckedHistory,
    LogEnds,
    NotRecorded,
    ReplayChooser,
    ReplayDivergence,
    ReplayModel,
    ReplayTask,
    ScratchBlobs,
    first_tensor_difference,
)
from sia_engine.domain.events import (
    ActionTaken,
    AdapterCheckpointed,
    BaselineScored,
    BranchForked,
    Event,
    FeedbackVerdict,
    IterationStarted,
    ModelRef,
    RolledBack,
    RunConfigured,
    RunStarted,
    ScaffoldPatched,
    TrajectoryRecorded,
    VersionAccepted,
    VersionEvaluated,
    VersionRejected,
)
from sia_engine.domain.projection import Recorded, records
from sia_engine.domain.state import state_hash
from sia_engine.errors import ReducerError, SiaError
from sia_engine.experiment.artifact import METHOD as ARTIFACT
from sia_engine.experiment.artifact import best_artifact
from sia_engine.experiment.baselines import (
    best_of_k,
    random_search,
    reference_methods,
    test_episodes,
)
from sia_engine.loop.feedback.model import LLMPolicy
from sia_engine.loop.feedback.bandit import BanditPolicy
from sia_engine.loop.feedback.rule import FeedbackAgent, RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.loop.pins import (
    data_difference,
    data_pin,
)
from sia_engine.loop.task import Episode, Score, ScoresConcurrently, Task, scope_cache
from sia_engine.models.protocol import Model
from store import BlobStore, EventLog, MemoryEventLog, Store
from store.errors import BlobError

__all__ = ["ReplayDivergence", "AdapterDiffers", "ReplayReport", "replay_recorded", "replay_records"]

_BEST_OF = re.compile(r"(?P<experiment>.+)-best-of-(?P<k>[0-9]+)-s(?P<seed>[0-9]+)")
_NO_MODEL = ModelRef(id="")


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
            scores = dict(zip(todo, pool.map(one, todo), strict=True))
    else:
        scores = {pair: one(pair) for pair in todo}
    # A sandboxed run that timed out here, where the log scored it otherwise, may have met a busy
    # machine (runs side by side, other work): scored once more, alone, in a cache scope of its own.
    recorded = {(t.episode_id, t.output): t.score for t in trajs}
    for i, pair in enumerate(p for p, sc in list(scores.items()) if _timed_out(sc) and differs(sc.score, recorded.get(p))):
        scope_cache(task, f"replay-retry-{i}")
        scores[pair] = one(pair)
    return scores


def _timed_out(s: Score) -> bool:
    return any(c.outputs.get("status") == "timeout" for c in s.tools)


def replay_recorded(store: Store | EventLog, branch: str, task: Task | None, *, retrain: Model | None = None) -> ReplayReport:
    """Replay ``branch`` of a store (or an event log: then only what needs no blob) from its
    recorded outputs; raises ``ReplayDivergence`` at the first disagreement. ``retrain``: a
    model (the run's base model) that trains every adapter again, compared byte for byte."""
    log: EventLog = store.log if isinstance(store, Store) else store
    blobs = store.blobs if isinstance(store, Store) else None
    return replay_records(branch, list(records(log, branch)), task, blobs=blobs, retrain=retrain)


def replay_records(branch: str, recs: Sequence[Recorded], task: Task | None, *, blobs: BlobStore | None = None,
                   retrain: Model | None = None) -> ReplayReport:
    """``replay_recorded`` over a branch's records already read and decoded (the audit reads
    each branch once for all its sections)."""
    if task is None or blobs is None:
        why = "the task is not available here" if task is None else "the store's blobs are not available here"
        return reduce_and_gate(branch, recs, f"verdicts, patches, adapters' plans and scores: {why}")
    return _Replay(branch, recs, task, blobs, retrain).run()


def _step_tag(action_id: str) -> str:
    return action_id.rsplit("-", 1)[0]


class _Replay:
    """One branch replayed by the loop (see the module's docstring)."""

    def __init__(self, branch: str, recs: Sequence[Recorded], task: Task, blobs: BlobStore, retrain: Model | None) -> None:
        self.branch, self.recs, self.task, self.blobs, self.retrain = branch, recs, task, blobs, retrain
        self.episodes = {e.id: e for split in ("train", "val", "test") for e in task.episodes(split)}
        self.scores = _prescore(task, self.episodes, [r.event for r in recs if isinstance(r.event, TrajectoryRecorded)])
        self.rtask = ReplayTask(task, dict(self.scores))
        self.model = ReplayModel(recs[0].event.base_model if recs and isinstance(recs[0].event, RunStarted) else _NO_MODEL, blobs, retrain)
        self.judge: ReplayModel | ReplayChooser | None = None  # a model Feedback Agent's model (it may not be the agent's)
        self.scratch = Store(Path("/nonexistent/sia-replay-scratch"), MemoryEventLog(), ScratchBlobs())
        self.scratch.log.init_branch("replay")
        self.hist = CheckedHistory(self.scratch.log, "replay", self.scratch.blobs, recs, self._check)
        self.loop: Loop | None = None
        self.counts = {k: 0 for k in ("rescored", "evaluations", "verdicts", "choices", "decisions", "patches", "adapters", "rederived",
                                      "outputs", "baselines")}
        self.report: dict[str, Any] = {"data": "", "environment": ()}

    def run(self) -> ReplayReport:
        unfinished = ""
        while (rec := self.hist.peek()) is not None:
            try:
                self._next(rec)
            except ReducerError as err:
                at = self.hist.peek() or rec
                raise ReplayDivergence(at.where, "reducer", "an event consistent with the history", str(err)) from None
            except (SiaError, BlobError, msgspec.ValidationError, TypeError, ValueError, KeyError, struct.error) as err:
                if isinstance(err, ReplayError):  # a divergence, or a refusal of what was given (another base model)
                    raise
                # a recorded value the loop's steps cannot take (a crafted config, a blob that is no adapter): the log is inconsistent
                at = self.hist.peek() or rec
                raise ReplayDivergence(at.where, "step", "a step the loop can take from this history",
                                       f"{type(err).__name__}: {str(err)[:300]}") from None
            except (LogEnds, NotRecorded) as err:
                if isinstance(err, NotRecorded) and not self._step_runs_to_end():
                    at = self.hist.peek() or rec
                    raise ReplayDivergence(at.where, "model request", "one the log recorded", f"not recorded: {err.what}") from None
                left = len(self.recs) - self.hist.at
                while (tail := self.hist.peek()) is not None:
                    if isinstance(tail.event, TrajectoryRecorded):  # its outputs re-scored all the same
                        self._rescore(tail.where, tail.event)
                    self.hist.apply_recorded()
                unfinished = (f"the branch ends inside a step (a run stopped and not resumed): its last {left} event(s) applied as "
                              "recorded (their outputs re-scored), the step not recomputed")
                break
        return ReplayReport(self.branch, len(self.recs), state_hash=state_hash(self.hist.state), **self._finish(unfinished))

    def _finish(self, unfinished: str) -> dict[str, Any]:
        out: dict[str, Any] = {**self.counts, **self.report, "unfinished": unfinished}
        out["adapter_seconds"] = tuple(round(s, 3) for s in self.model.train_seconds)
        return out

    # -- what the loop is asked to do next, from the log's next event -----------------------------
    def _next(self, rec: Recorded) -> None:
        e = rec.event
        if isinstance(e, (RunStarted, BranchForked, RunConfigured, RolledBack)):  # what a user asked: applied as recorded
            before = self.recs[self.hist.at - 1].event if self.hist.at else None
            if isinstance(e, RunConfigured) and not isinstance(before, BranchForked):  # the loop records new settings only there
                raise ReplayDivergence(rec.where, "event", "run_configured only first on a fork (a fork's first run)", e.kind())
            self.hist.apply_recorded()
            if isinstance(e, RunStarted):
                self.model.ref = e.base_model
                self._pins(rec, e)
            if isinstance(e, (RunStarted, RunConfigured)):
                self._new_loop(rec)
            return
        loop, s = self.loop, self.hist.state
        if loop is None or s.run is None:
            raise ReplayDivergence(rec.where, "event", "run_started first", e.kind())
        if s.phase == "idle":
            self._idle(rec, loop)
        elif s.phase == "started":
            self._load_feedback()
            loop.decide()
        elif s.phase == "decided":
            self.model.load_training(e if isinstance(e, AdapterCheckpointed) else None)
            loop.apply_lever()
        elif s.phase == "candidate":
            assert s.candidate is not None
            self._load_step()
            loop.evaluate(s.versions[s.candidate], decide=True)
        else:  # "evaluated": a history whose decision was recorded after its evaluation
            loop.gate()

    def _idle(self, rec: Recorded, loop: Loop) -> None:
        """An idle branch: the head's first evaluation, an iteration, or an experiment's last steps."""
        e, head = rec.event, self.hist.state.head_version
        assert head is not None
        tag = _step_tag(e.action_id) if isinstance(e, ActionTaken) and e.is_generation else ""
        best = _BEST_OF.fullmatch(tag)
        if isinstance(e, IterationStarted) and head.score("val") is not None:
            self._load_step(skip=1)
            loop.roll_out(head, self.hist.state.iteration + 1)
        elif tag.startswith("eval-") and head.score("val") is None:
            self._load_step()
            loop.evaluate(head, decide=False)
        elif tag.startswith("test-") and head.score("test") is None:  # an experiment's test score of an arm's (or the base's) head
            self._load_step()
            loop.evaluate(head, decide=False, split="test", episodes=test_episodes(loop))
        elif best is not None:
            self._load_step()
            k, rows = int(best["k"]), self.model.step_rows
            if k != rows:  # k candidates are k recorded outputs (a k the log cannot hold is never asked for)
                raise ReplayDivergence(rec.where, "k", f"{rows} (the outputs recorded)", k)
            loop.hist.record(best_of_k(loop, experiment=best["experiment"], k=k, seed=int(best["seed"])))
            self.counts["baselines"] += 1
        elif isinstance(e, BaselineScored) and e.method != "best-of-k":
            loop.hist.record(self._baseline(rec, e, loop))
        else:
            raise ReplayDivergence(rec.where, "step", "a step the loop takes next", tag or e.kind())

    def _baseline(self, rec: Recorded, e: BaselineScored, loop: Loop) -> BaselineScored:
        """A search or reference method an experiment recorded, computed again by its own function."""
        made: BaselineScored | None = None
        if e.method.startswith("reference:"):
            made = next((b for b in reference_methods(self.task, experiment=e.experiment) if b.method == e.method), None)
        elif e.method == ARTIFACT:  # an arm's best artifact: from the answers the replayed branch scored
            made = best_artifact(loop, experiment=e.experiment)
        elif e.method == "random-search" and e.seed is not None and isinstance(k := e.details.get("k"), int) \
                and k == len(e.details.get("candidates") or ()):  # as many candidates as the event lists, never more
            made = random_search(self.task, loop.val, test_episodes(loop), experiment=e.experiment, k=k, seed=e.seed)
        if made is None:
            raise ReplayDivergence(rec.where, "method", "a baseline this task computes", e.method)
        self.counts["baselines"] += 1
        return made

    def _new_loop(self, rec: Recorded) -> None:
        """The loop, built from the run's recorded settings (again after a fork's new ones)."""
        run = self.hist.state.run
        assert run is not None
        try:
            cfg = LoopConfig.from_recorded(run.config, run.levers)
            feedback: FeedbackAgent = self._llm_policy() if cfg.feedback == "llm" else BanditPolicy() if cfg.feedback == "bandit" else RulePolicy()
            loop = Loop(self.scratch, task=self.rtask, model=self.model, feedback=feedback, config=cfg, branch="replay")
        except (msgspec.ValidationError, SiaError, TypeError, ValueError) as err:
            raise ReplayDivergence(rec.where, "config", "settings this engine runs", str(err)) from None
        loop.hist = self.hist
        self.loop = loop

    def _llm_policy(self) -> LLMPolicy:
        """The model Feedback Agent as the log shows it ran: the model it asked (by the name its
        questions record), whether it calibrated (its questions record a prior), how it chose
        (log-likelihoods, or an endpoint's choice) and how long a free text it allowed."""
        asked = [r.event for r in self.recs if isinstance(r.event, ActionTaken) and r.event.name in ("feedback-score", "feedback-write")]
        scored = [a.score_inputs() for a in asked if a.name == "feedback-score"]
        chooser = any("index" in a.outputs for a in asked if a.name == "feedback-score")
        ref = ModelRef(id=scored[0].model) if scored else self.model.ref
        self.judge = (ReplayChooser if chooser else ReplayModel)(ref, self.blobs)
        writes = [a.inputs.get("request", {}) for a in asked if a.name == "feedback-write"]
        longest = int(writes[0].get("decoding", {}).get("max_new_tokens", 200)) if writes else 200
        return LLMPolicy(self.judge, calibrate=not scored or scored[0].prior_messages is not None, max_prompt_tokens=longest)

    def _pins(self, rec: Recorded, e: RunStarted) -> None:
        """The task's data here against the run's pin (other data: a divergence), the software, and
        the model given to train adapters again (it must be the run's base model)."""
        if self.retrain is not None and self.retrain.ref.weights_hash != e.base_model.weights_hash:
            raise RebuildMismatch(f"base model {e.base_model.id!r} weights sha256 (to train adapters again)", e.base_model.weights_hash,
                                  self.retrain.ref.weights_hash)
        if e.data is None:
            self.report["data"] = "not pinned (recorded before run_started schema 2)"
        elif (diff := data_difference(e.data, data_pin(self.task))) is not None:
            what, recorded, found = diff
            raise ReplayDivergence(rec.where, what, found, recorded, "replay the run on the data it recorded (--data)")
        else:
            self.report["data"] = "as recorded"
        self.report["environment"] = environment_notes(e, self.retrain)

    # -- what the step will ask, from the log ----------------------------------------------------
    def _upcoming(self, skip: int, keep: Any) -> list[Event]:
        """The events from the cursor (after ``skip``) that ``keep`` says belong to the step (a
        fork point inside the step is stepped over)."""
        out: list[Event] = []
        i = skip
        while (r := self.hist.peek(i)) is not None and (keep(r.event) or isinstance(r.event, BranchForked)):
            if not isinstance(r.event, BranchForked):
                out.append(r.event)
            i += 1
        return out

    def _load_step(self, skip: int = 0) -> None:
        """The step's recorded outputs (its generations, tool calls and trajectories)."""
        first = self.hist.peek(skip)
        tag = _step_tag(first.event.action_id) + "-" if first is not None and isinstance(first.event, ActionTaken) else "\0"

        def mine(e: Event) -> bool:
            return (isinstance(e, ActionTaken) and e.action_id.startswith(tag)) or (isinstance(e, TrajectoryRecorded) and e.trajectory_id.startswith(tag))

        events = self._upcoming(skip, mine)
        self.model.load_step(events)
        self.rtask.load_step(events)

    def _load_feedback(self) -> None:
        events = self._upcoming(0, lambda e: isinstance(e, FeedbackVerdict) or (isinstance(e, ActionTaken) and e.name.startswith("feedback-")))
        if self.judge is not None:
            self.judge.load_feedback([e for e in events if isinstance(e, ActionTaken)], [e for e in events if isinstance(e, FeedbackVerdict)])

    def _step_runs_to_end(self) -> bool:
        """Whether the log ends inside the step under way (nothing but its outputs follow)."""
        return all(isinstance(r.event, (ActionTaken, TrajectoryRecorded, BranchForked)) for r in self.recs[self.hist.at :])

    # -- each event the loop records, against the log -------------------------------------------
    def _check(self, rec: Recorded, made: Event) -> None:
        e = rec.event
        if isinstance(e, TrajectoryRecorded):
            self._rescore(rec.where, e)
        if self.retrain is not None and isinstance(made, AdapterCheckpointed) and isinstance(e, AdapterCheckpointed) and made.blob != e.blob:
            tensor = first_tensor_difference(self.scratch.blobs.get(made.blob), self.blobs.get(e.blob))
            raise AdapterDiffers(rec.where, e.version_id, made.blob, e.blob, tensor or "(none: the metadata differs)")
        compare(rec.where, made, e)
        kind = {TrajectoryRecorded: "outputs", VersionEvaluated: "evaluations", FeedbackVerdict: "verdicts", VersionAccepted: "decisions",
                VersionRejected: "decisions", ScaffoldPatched: "patches", AdapterCheckpointed: "adapters"}.get(type(e))
        if kind is not None:
            self.counts[kind] += 1
        if isinstance(e, FeedbackVerdict) and e.choice:
            self.counts["choices"] += 1
        if isinstance(e, AdapterCheckpointed) and self.retrain is not None:
            self.counts["rederived"] += 1

    def _rescore(self, where: str, e: TrajectoryRecorded) -> None:
        """The output scored again by the task's own scorer (score and failure class)."""
        if e.episode_id not in self.episodes:
            raise ReplayDivergence(where, "episode_id", "an episode of the task", e.episode_id)
        s = self.scores[(e.episode_id, e.output)]
        if differs(s.score, e.score):
            raise ReplayDivergence(where, "score", s.score, e.score)
        if e.failure and s.failure != e.failure:
            raise ReplayDivergence(where, "failure", s.failure, e.failure)
        for key in sorted(set(s.metrics) | set(e.metrics)):
            if differs(s.metrics.get(key), e.metrics.get(key)):
                raise ReplayDivergence(where, f"metrics.{key}", s.metrics.get(key), e.metrics.get(key))
        self.counts["rescored"] += 1
