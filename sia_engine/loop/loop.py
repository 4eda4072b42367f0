"""The improvement loop: roll out the head, ask the Feedback Agent, pull a lever, evaluate the
candidate, accept or reject. Every step is recorded before the next starts, so a run that stops
anywhere (crash, SIGKILL, Ctrl-C) resumes from the log without recording any step twice.

All randomness comes from seeds recorded in the log: iteration ``i`` gets
``sha256(run seed, i)``, and every sampled request and training run derives from it.

Exploration: training rollouts draw ``samples`` outputs per episode at ``temperature`` (whatever
the scaffold's decoding says), each a trajectory. The gate scores versions on validation episodes
with the run's ``EvalProtocol`` (greedy, or the mean or best of k samples at a temperature, with
the same seeds for every version), recorded with every evaluation.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from typing import Literal

import msgspec

from sia_engine.domain.events import (
    ActionTaken,
    AdapterCheckpointed,
    Event,
    FeedbackVerdict,
    IterationStarted,
    RunConfigured,
    RunStarted,
    ScaffoldPatched,
    TrajectoryRecorded,
    VersionAccepted,
    VersionEvaluated,
    VersionRejected,
    decode_envelope,
)
from sia_engine.domain.history import History
from sia_engine.domain.projection import AdaptersTrained, project
from sia_engine.domain.scaffold import Decoding, Scaffold, apply_patch, scaffold_hash
from sia_engine.domain.state import AgentState, Version, version_id
from sia_engine.errors import InvalidSettings, RunMismatch, SiaError
from sia_engine.loop.feedback.bandit import outcomes
from sia_engine.loop.feedback.rule import Context, FeedbackAgent
from sia_engine.loop.batches import Step, StepRunner, rows_by_id
from sia_engine.loop.hooks import Hooks
from sia_engine.loop.pins import check_pins, data_pin, environment
from sia_engine.loop.recipes import gold_episodes, training_examples
from sia_engine.loop.settings import EvalProtocol, LoopConfig, check_settings
from sia_engine.loop.task import Episode, Failure, Task, answer_options
from sia_engine.models.protocol import Adapter, Model, Request, ServesOnDevice
from store import BlobStore, Store
from store.blobs import safetensors_metadata

__all__ = ["EvalProtocol", "LoopConfig", "Loop", "RunMismatch", "load_adapter", "iteration_seed", "check_settings", "check_run",
           "evaluation_score", "gate_accepts", "failure_classes"]

def check_run(config: LoopConfig, task: Task, model: Model) -> LoopConfig:
    """``check_settings``, then what the settings ask of the task and the model."""
    config = check_settings(config)
    if "weights" in config.levers and not model.trains_weights:
        raise SiaError(f"model {model.ref.id!r} cannot train weights: run it with --levers scaffold")
    if config.recipe == "sft" and not gold_episodes(task):
        raise InvalidSettings("recipe", "sft", f"task {task.name!r} has no gold answers to fine-tune on; use rft, grpo or auto")
    return config


def evaluation_score(trajs: Sequence[TrajectoryRecorded], mode: str) -> tuple[float, list[float], list[float]]:
    """A version's score under the protocol's ``mode`` (the mean over episodes of each episode's
    mean sample score, or of its best for ``best``), with the per-episode means and bests."""
    per_episode: dict[str, list[float]] = {}
    for t in trajs:
        per_episode.setdefault(t.episode_id, []).append(t.score or 0.0)
    means = [sum(v) / len(v) for v in per_episode.values()]
    bests = [max(v) for v in per_episode.values()]
    return sum(bests if mode == "best" else means) / len(per_episode), means, bests


def gate_accepts(score: float, head_score: float | None, margin: float) -> bool:
    """The gate: a candidate is accepted when it beats the head's score by more than ``margin``."""
    return head_score is not None and score > head_score + margin


def failure_classes(trajs: Sequence[TrajectoryRecorded], task: Task, episodes: dict[str, Episode]) -> dict[str, Failure]:
    """Each trajectory's failure class as recorded (logs from before it was recorded: re-scored)."""
    return {t.trajectory_id: t.failure or task.score(episodes[t.episode_id], t.output).failure for t in trajs}


def _resume_hint(key: str, recorded: dict[str, object]) -> str:
    """What to resume a run recorded before a setting existed with (empty: nothing to say)."""
    lora = recorded.get("lora")
    if key == "batch_rows" and "batch_rows" not in recorded:
        return "it was recorded before batched generation: resume it with --batch-rows 0"
    if key == "lora" and isinstance(lora, dict) and "packing" not in lora:
        return "it was recorded before packed training: resume it with --no-lora-packing"
    return ""


def iteration_seed(seed: int, iteration: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{iteration}".encode()).digest()[:4], "little")


def load_adapter(blobs: BlobStore, blob_id: str | None) -> Adapter | None:
    """A version's adapter from its blob (the peft config travels in the blob's metadata)."""
    if blob_id is None:
        return None
    data = blobs.get(blob_id)
    meta = safetensors_metadata(data)
    return Adapter(blob_id, data, json.loads(meta["peft_config"]))


class Loop:
    def __init__(
        self,
        store: Store,
        *,
        task: Task,
        model: Model,
        feedback: FeedbackAgent,
        config: LoopConfig,
        branch: str = "main",
        scaffold: Scaffold | None = None,
        hooks: Hooks | None = None,
        engine_version: str = "0",
    ) -> None:
        config = check_run(config, task, model)
        self.store = store
        self.task = task
        self.model = model
        self.feedback = feedback
        self.config = config
        self.branch = branch
        self.initial = scaffold or task.scaffold()
        self.hooks = hooks or Hooks()
        self.engine_version = engine_version
        if branch not in {b.name for b in store.log.branches()}:
            store.log.init_branch(branch)
        self.hist = History.open(store.log, branch, blobs=store.blobs)
        self._open: list[Event] | None = None  # events of the open iteration, when recorded here
        self._resumed = False  # whether an unfinished step's recorded outputs were looked for
        self.val = task.episodes("val")[: config.val_episodes]
        self.train = task.episodes("train")
        if not self.val or not self.train:
            raise SiaError(f"task {task.name!r} has no train or no val episodes")

    # -- the run ------------------------------------------------------------------------------
    def _start_or_check(self) -> None:
        run = self.hist.state.run
        if run is None:
            self.hist.record(
                RunStarted(
                    run_id=f"{self.task.name}-{self.config.seed}", task=self.task.name, seed=self.config.seed,
                    base_model=self.model.ref, scaffold=self.initial, engine_version=self.engine_version,
                    levers=tuple(self.config.levers), config=self.config.recorded(), data=data_pin(self.task),
                    environment=environment(self.model)))
            return
        if run.base_model != self.model.ref:
            raise RunMismatch("base model", msgspec.to_builtins(run.base_model), msgspec.to_builtins(self.model.ref))
        given = json.loads(json.dumps(self.config.recorded()))
        # a run recorded before a setting existed ran without it: resuming it with the setting is
        # a mismatch (fork the branch, or use another store), never a silent change of behaviour
        for key in sorted(set(given) | set(run.config)):
            if run.config.get(key) != given.get(key):
                if self._fresh_fork():  # a fork's first run may change the settings: recorded on the fork
                    self.hist.record(RunConfigured(config=self.config.recorded(), levers=tuple(self.config.levers),
                                                   reason=f"settings of branch {self.branch!r}, first changed: {key}"))
                    break
                raise RunMismatch(key, run.config.get(key), given.get(key), _resume_hint(key, run.config))
        check_pins(run, self.task, self.model, self.hooks.note)
        self._report_devices()

    def _fresh_fork(self) -> bool:
        """This branch is a fork with nothing recorded on it since its ``branch_forked`` event."""
        info = self.store.log.branch(self.branch)
        return info.base_branch is not None and info.head_seq == 0 and self.store.log.at(self.branch, 0).kind == "branch_forked" \
            and self.hist.state.phase == "idle"

    def _report_devices(self) -> None:
        """Adapters trained on another device are served here all the same; say so."""
        if not isinstance(self.model, ServesOnDevice):
            return
        here = self.model.device
        [adapters] = project(self.store.log, self.branch, AdaptersTrained())
        trained = {e.device for _, e in adapters}
        other = sorted(d for d in trained if d and d != here)
        if other:
            self.hooks.note(f"adapters in this history were trained on {', '.join(other)}; serving them on {here}")

    def run(self, stop: Callable[[], bool] | None = None) -> AgentState:
        """Run (or resume) until ``iterations`` iterations are done, the wall time is spent, or
        ``stop()`` says so (asked before each iteration starts: an experiment's budget)."""
        self._start_or_check()
        self._resumed = False
        t0 = time.monotonic()
        while True:
            s = self.hist.state
            if s.phase == "idle":
                head = s.head_version
                assert head is not None
                if head.score("val") is None:
                    self.evaluate(head, decide=False)
                    continue
                out_of_time = self.config.wall_time_s is not None and time.monotonic() - t0 > self.config.wall_time_s
                if s.iteration + 1 >= self.config.iterations or out_of_time or (stop is not None and stop()):
                    break
                self._open = None
                self.roll_out(head, s.iteration + 1)
            elif s.phase == "started":
                if not self._rollouts_done():
                    head = s.head_version
                    assert head is not None
                    self._open = None
                    self.roll_out(head, s.iteration, resume=True)
                self.decide()
            elif s.phase == "decided":
                self.apply_lever()
            elif s.phase == "candidate":
                assert s.candidate is not None
                self.evaluate(s.versions[s.candidate], decide=True)
            else:  # "evaluated": a crash came between evaluation and decision
                self.gate()
        self.hooks.finished(self.hist.state)
        return self.hist.state

    # -- steps --------------------------------------------------------------------------------
    def _serve(self, version: Version) -> None:
        self.model.set_adapter(load_adapter(self.store.blobs, version.adapter))

    def _episodes(self, version: Version, episodes: Sequence[Episode], split: Literal["train", "val", "test"], seed: int, tag: str,
                  decoding: Decoding, n: int) -> list[Event]:
        """Generate ``n`` samples per episode under ``version``, score and record each: an
        action and a trajectory per sample (episode ``k`` draws its samples from seed ``seed + k``),
        in batches (``sia_engine.loop.batches``); returns the step's events, those recorded
        before a resume included."""
        self._serve(version)
        prefix = self.task.answer_prefix
        requests = tuple(Request(self.task.messages(version.scaffold, ep), decoding, seed=seed + k, prefix=prefix, n=n, options=answer_options(self.task, ep))
                         for k, ep in enumerate(episodes))
        self.hooks.phase(f"{split} rollouts ({n} sample{'s' if n > 1 else ''} per episode)", len(requests) * n)
        step = Step(tag, split, version.version_id, tuple(episodes), requests, prefix)
        runner = StepRunner(self.model, self.task, batch_rows=self.config.batch_rows, record=self._record_rows,
                            advance=self.hooks.advance)
        return runner.run(step, rows_by_id(self._tail(), tag))

    def _record_rows(self, events: list[Event]) -> None:
        self.hist.record(*events)

    def _tail(self) -> list[Event]:
        """Outputs recorded at the end of the branch by a step that did not finish (read once,
        when the loop resumes; afterwards every step this loop starts is its own)."""
        if self._resumed:
            return []
        self._resumed = True
        head = self.store.log.branch(self.branch).head_seq
        if head is None or head < 0 or self.store.log.at(self.branch, head).kind not in ("action_taken", "trajectory_recorded"):
            return []  # the last step finished: nothing to read
        events = [decode_envelope(e) for e in self.store.log.read(self.branch)]
        start = len(events)
        while start and isinstance(events[start - 1], ActionTaken | TrajectoryRecorded):
            start -= 1
        return events[start:]

    def roll_out(self, head: Version, iteration: int, *, resume: bool = False) -> None:
        seed = iteration_seed(self.config.seed, iteration)
        episodes = random.Random(seed).sample(self.train, min(self.config.train_episodes, len(self.train)))
        self.hooks.iteration(iteration, self.config.iterations)
        if not resume:
            self.hist.record(IterationStarted(iteration=iteration, head_version=head.version_id, seed=seed))
            self._resumed = True  # nothing of this step is recorded yet
        decoding = msgspec.structs.replace(head.scaffold.decoding, temperature=self.config.temperature)  # training rollouts sample
        self._open = self._episodes(head, episodes, "train", seed, f"i{iteration}-train", decoding, self.config.samples)

    def _rollouts_done(self) -> bool:
        """Whether the open iteration recorded all its rollouts (a run killed mid-way did not)."""
        want = min(self.config.train_episodes, len(self.train)) * self.config.samples
        return sum(isinstance(e, TrajectoryRecorded) and e.split == "train" for e in self._iteration_events()) >= want

    def _iteration_events(self) -> list[Event]:
        """Events of the open iteration after its ``iteration_started`` (read back from the log,
        ancestry included, when the run resumes mid-iteration)."""
        if self._open is not None:
            return self._open
        log = self.store.log
        starts = log.read(self.branch, kinds=["iteration_started"])
        if not starts:
            raise SiaError(f"branch {self.branch!r} has no open iteration")
        last = starts[-1]
        if last.branch == self.branch:
            rest = log.read(self.branch, after_seq=last.seq)
        else:
            full = log.read(self.branch)
            rest = full[next(i for i, e in enumerate(full) if e.id == last.id) + 1 :]
        self._open = [decode_envelope(e) for e in rest]
        return self._open

    def decide(self) -> None:
        s = self.hist.state
        head = s.head_version
        assert head is not None
        trajs = tuple(e for e in self._iteration_events() if isinstance(e, TrajectoryRecorded) and e.split == "train")
        failures = failure_classes(trajs, self.task, {e.id: e for e in self.train})
        seen = outcomes(self.store.log, self.branch) if getattr(self.feedback, "reads_outcomes", False) else ()
        ctx = Context(s, head, trajs, failures, tuple(self.config.levers), s.iteration, recipe=self.config.recipe, rft_top=self.config.lora.rft_top, outcomes=seen)
        self.hooks.phase("feedback", None)
        decision = self.feedback.decide(ctx, self.task)
        stands = decision.verdicts[-1]
        # A scaffold patch is a pure function of the verdict: both go in one atomic batch.
        patch = [self._patched(stands)] if stands.valid and stands.lever == "scaffold" else []
        self.hist.record(*decision.actions, *decision.verdicts, *patch)
        self.hooks.verdict(stands)

    def _patched(self, verdict: FeedbackVerdict) -> ScaffoldPatched:
        s = self.hist.state
        head = s.head_version
        assert head is not None and s.run is not None
        new = apply_patch(head.scaffold, verdict.patch)
        vid = version_id(s.run.base_model, new, head.adapter)
        return ScaffoldPatched(parent_version=head.version_id, version_id=vid, ops=verdict.patch, scaffold_hash=scaffold_hash(new))

    def apply_lever(self) -> None:
        s = self.hist.state
        verdict = s.pending
        head = s.head_version
        assert verdict is not None and head is not None and s.run is not None
        if verdict.lever == "scaffold":  # a history that recorded the verdict without its patch
            self.hist.record(self._patched(verdict))
            return
        assert verdict.training_plan is not None
        plan = verdict.training_plan
        recipe = plan.effective_recipe
        trajs = [e for e in self._iteration_events() if isinstance(e, TrajectoryRecorded)]
        episodes = {e.id: e for e in self.train}
        chosen = set(plan.trajectory_ids)
        used = {t.episode_id for t in trajs if t.trajectory_id in chosen}
        messages = {eid: self.task.messages(head.scaffold, episodes[eid]) for eid in used}
        examples = training_examples(plan, trajs, episodes, messages, self.task.answer_prefix)
        seed = iteration_seed(self.config.seed, s.iteration)
        parent = load_adapter(self.store.blobs, head.adapter)
        self.hooks.phase(f"LoRA training steps ({recipe}, {len(examples)} examples)", self.config.lora.steps)
        trained = self.model.train_adapter(examples, self.config.lora, seed=seed, parent=parent, recipe=recipe,
                                           on_step=lambda i, loss: self.hooks.advance(1, loss=loss))
        base = s.run.base_model
        blob = self.store.blobs.put_safetensors(trained.tensors, metadata={
            "peft_config": json.dumps(trained.peft_config, sort_keys=True), "base_model": base.id,
            "base_model_weights_sha256": base.weights_hash, "recipe": recipe})
        vid = version_id(base, head.scaffold, blob)
        hyper = {**msgspec.to_builtins(self.config.lora), "samples": self.config.samples, "temperature": self.config.temperature}
        self.hist.record(
            AdapterCheckpointed(parent_version=head.version_id, version_id=vid, blob=blob, peft_config=trained.peft_config,
                                training_data=tuple(e.source for e in examples), seed=seed, metrics=trained.metrics,
                                parent_adapter=head.adapter, recipe=recipe, hyper=hyper, curve=trained.curve, base_model=base,
                                device=trained.device, dtype=trained.dtype)
        )

    def evaluate(self, version: Version, *, decide: bool, split: Literal["val", "test"] = "val",
                  episodes: Sequence[Episode] | None = None) -> None:
        tag = f"eval-{version.version_id[:12]}" if split == "val" else f"{split}-{version.version_id[:12]}"
        protocol = self.config.eval
        decoding, n = protocol.effective(version.scaffold.decoding)
        events = self._episodes(version, self.val if episodes is None else episodes, split, self.config.seed, tag, decoding, n)
        trajs = [e for e in events if isinstance(e, TrajectoryRecorded)]
        score, means, bests = evaluation_score(trajs, protocol.mode)
        keys = sorted({k for t in trajs for k in t.metrics})
        metrics = {k: sum(t.metrics.get(k, 0.0) for t in trajs) / len(trajs) for k in keys}
        metrics.update(sample_mean=sum(means) / len(means), best_of_k=sum(bests) / len(bests),
                       distinct_outputs=float(len({t.output for t in trajs})))
        done: list[Event] = [VersionEvaluated(version_id=version.version_id, split=split, score=score, n_episodes=len(means), metrics=metrics,
                                 protocol={"mode": protocol.mode, "samples": n, "temperature": decoding.temperature})]
        if decide:
            done.append(self._decision(version, score))
        self.hist.record(*done)

    def sample(self, version: Version, episodes: Sequence[Episode], *, split: Literal["val", "test"], seed: int, tag: str, n: int) -> list[Event]:
        """Record ``n`` outputs of ``version`` per episode, sampled at the run's ``temperature``
        (episode ``k`` from seed ``seed + k``), each scored on its episode; returns the events.
        No decision reads them: an experiment's best-of-k baseline draws its candidates here."""
        decoding = msgspec.structs.replace(version.scaffold.decoding, temperature=self.config.temperature)
        return self._episodes(version, episodes, split, seed, tag, decoding, n)

    def _decision(self, cand: Version, score: float) -> Event:
        head = self.hist.state.head_version
        assert head is not None
        head_score = head.score("val")
        if gate_accepts(score, head_score, self.config.margin):
            ev: Event = VersionAccepted(version_id=cand.version_id, previous=head.version_id, score=score, previous_score=head_score, margin=self.config.margin)
        else:
            ev = VersionRejected(version_id=cand.version_id, head=head.version_id, score=score, head_score=head_score,
                                 reason=f"val score {score:.4f} is not above the head's {head_score} + margin {self.config.margin}")
        self.hooks.decided(cand, score, head_score, isinstance(ev, VersionAccepted))
        return ev

    def gate(self) -> None:
        s = self.hist.state
        assert s.candidate is not None
        cand = s.versions[s.candidate]
        score = cand.score("val")
        assert score is not None
        self.hist.record(self._decision(cand, score))
