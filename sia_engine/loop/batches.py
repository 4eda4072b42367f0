"""One step's outputs (an iteration's rollouts, an evaluation, a baseline's samples): generated in
batches planned as a pure function of the step, scored while the next batch generates, recorded
in request order, and checked against what the step had already recorded when it resumes.

- **Batches.** A step's requests are ordered by prompt length (ties by request order) and cut
  into batches of at most ``batch_rows`` model rows (a sampled request of ``n`` is ``n`` rows, a
  greedy one is one); each batch is one ``generate`` call. Every output records its batch
  (``<tag>/<index>``) and its row in it, so a re-execution asks the very same batches again.
  ``batch_rows`` 0 is the generation from before batching: one request per call
  (``GeneratesSerially`` where the model keeps it).
- **Scoring.** A task that may be scored on several threads (``concurrent_scoring``) is scored in
  a pool of workers (each run a sandboxed process) while the next batch generates; one with a
  scorer cache (``KeysScores``) scores a repeated key only after its first, as a serial run
  would. Any other task is scored on the loop's thread, after generation (a GPU timing task
  must not share its device with generation).
- **Recording.** Each output's events (the generate action, the scorer's tool calls, the
  trajectory) are recorded as one batch, in request order, as soon as every earlier output is.
- **Resuming.** A batch interrupted mid-way is generated again whole; an output it had already
  recorded must come out the same (``GenerationMismatch`` otherwise) and is not scored again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import msgspec

from sia_engine.domain.events import ActionTaken, Event, TrajectoryRecorded
from sia_engine.domain.payloads import GenerateInputs
from sia_engine.errors import GenerationMismatch, SiaError
from sia_engine.loop.task import Episode, KeysScores, Score, ScoresConcurrently, Task
from sia_engine.models.protocol import CountsPromptTokens, Generation, GeneratesSerially, Model, Request

__all__ = ["Step", "StepRunner", "plan_batches", "model_rows", "row_id", "rows_by_id", "scoring_workers"]


class Step(msgspec.Struct, frozen=True):
    """What one step asks: a request per episode (``requests[k]`` for ``episodes[k]``), all
    under ``version_id``, its outputs tagged ``tag`` (action ids ``<tag>-<k>[.<j>]``)."""

    tag: str
    split: Literal["train", "val", "test"]
    version_id: str
    episodes: tuple[Episode, ...]
    requests: tuple[Request, ...]
    prefix: str = ""


def model_rows(r: Request) -> int:
    """How many rows a request takes in a batch (a greedy request's samples are copies)."""
    return r.n if r.decoding.temperature > 0 else 1


def plan_batches(requests: Sequence[Request], batch_rows: int, length: Callable[[Request], int]) -> list[list[int]]:
    """Request indices of each batch: by prompt length, then request order, at most
    ``batch_rows`` rows each (a request larger than that is a batch of its own); ``batch_rows``
    0: one request per batch, in order."""
    if batch_rows <= 0:
        return [[k] for k in range(len(requests))]
    order = sorted(range(len(requests)), key=lambda k: (length(requests[k]), k))
    batches: list[list[int]] = []
    rows = 0
    for k in order:
        n = model_rows(requests[k])
        if not batches or rows + n > batch_rows:
            batches.append([])
            rows = 0
        batches[-1].append(k)
        rows += n
    return batches


def row_id(tag: str, k: int, j: int, n: int) -> str:
    return f"{tag}-{k}" if n == 1 else f"{tag}-{k}.{j}"


def rows_by_id(events: Sequence[Event], tag: str) -> dict[str, list[Event]]:
    """The recorded outputs of step ``tag`` among ``events``: each output's id and its events
    (generate action, tool calls, trajectory), kept only where its trajectory was recorded."""
    rows: dict[str, list[Event]] = {}
    done: set[str] = set()
    for e in events:
        if isinstance(e, ActionTaken) and e.action_id.startswith(f"{tag}-"):
            base = e.action_id.rsplit("-tool", 1)[0] if e.actor == "tool" else e.action_id
            rows.setdefault(base, []).append(e)
        elif isinstance(e, TrajectoryRecorded) and e.trajectory_id.startswith(f"{tag}-"):
            rows.setdefault(e.trajectory_id, []).append(e)
            done.add(e.trajectory_id)
    return {k: v for k, v in rows.items() if k in done}


def scoring_workers(task: Task) -> int:
    """Threads that score at once: the cores for a task that allows it, else one."""
    if isinstance(task, ScoresConcurrently) and task.concurrent_scoring:
        return max(2, min(os.cpu_count() or 1, 8))
    return 1


class _Now:
    """A score computed when asked, on the asking thread (no pool)."""

    def __init__(self, fn: Callable[[], Score]) -> None:
        self.fn = fn

    def done(self) -> bool:
        return True

    def result(self) -> Score:
        return self.fn()


class _Scorer:
    def __init__(self, task: Task, workers: int) -> None:
        self.task = task
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="sia-score") if workers > 1 else None
        self.keys: dict[str, Future[Score]] = {}

    def submit(self, episode: Episode, answer: str) -> Future[Score] | _Now:
        if self.pool is None:
            return _Now(lambda: self.task.score(episode, answer))
        key = self.task.score_key(episode, answer) if isinstance(self.task, KeysScores) else None
        before = self.keys.get(key) if key is not None else None
        fut = self.pool.submit(self._after, before, episode, answer)
        if key is not None:
            self.keys[key] = fut
        return fut

    def _after(self, before: Future[Score] | None, episode: Episode, answer: str) -> Score:
        if before is not None:  # submitted earlier (a FIFO queue): running or done, never waiting on this one
            before.exception()
        return self.task.score(episode, answer)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _check(recorded: Sequence[Event], gen: Generation, aid: str) -> None:
    """A regenerated output against its recorded action (text, tokens, finish)."""
    [action] = [e for e in recorded if isinstance(e, ActionTaken) and e.action_id == aid]
    for field, now in (("text", gen.text), ("n_tokens", gen.n_tokens), ("finish", gen.finish)):
        if field in action.outputs and action.outputs[field] != now:
            raise GenerationMismatch(aid, field, action.outputs[field], now)


class StepRunner:
    """Runs steps for one loop: generate, score, record (see the module's docstring)."""

    def __init__(self, model: Model, task: Task, *, batch_rows: int, record: Callable[[list[Event]], None],
                 advance: Callable[[int], None] = lambda n: None) -> None:
        self.model, self.task, self.batch_rows = model, task, batch_rows
        self.record, self.advance = record, advance

    def _length(self, r: Request) -> int:
        return self.model.prompt_tokens(r.messages, r.prefix) if isinstance(self.model, CountsPromptTokens) else 0

    def _generate(self, requests: list[Request]) -> list[Generation]:
        if self.batch_rows <= 0 and isinstance(self.model, GeneratesSerially):
            return self.model.generate_serial(requests)
        return self.model.generate(requests)

    def run(self, step: Step, recorded: Mapping[str, Sequence[Event]]) -> list[Event]:
        """Every output's events in request order: those ``recorded`` already (checked where
        their batch is generated again) and the new ones, recorded here."""
        reqs = step.requests
        order = [(k, j) for k, r in enumerate(reqs) for j in range(r.n)]
        pending: dict[tuple[int, int], tuple[Generation, str | None, int, Future[Score] | _Now]] = {}
        out: list[Event] = []
        cursor = 0
        scorer = _Scorer(self.task, scoring_workers(self.task))
        try:
            for b, ks in enumerate(plan_batches(reqs, self.batch_rows, self._length)):
                rows = [(k, j) for k in ks for j in range(reqs[k].n)]
                if all(row_id(step.tag, k, j, reqs[k].n) in recorded for k, j in rows):
                    continue
                gens = self._generate([reqs[k] for k in ks])
                if len(gens) != len(rows):
                    raise SiaError(f"model {self.model.ref.id!r} answered {len(gens)} generations for {len(rows)} asked")
                bid = f"{step.tag}/{b}" if self.batch_rows > 0 else None
                for row, ((k, j), gen) in enumerate(zip(rows, gens, strict=True)):
                    aid = row_id(step.tag, k, j, reqs[k].n)
                    if aid in recorded:
                        _check(recorded[aid], gen, aid)
                    else:
                        pending[(k, j)] = (gen, bid, row, scorer.submit(step.episodes[k], step.prefix + gen.text))
                self.advance(len(rows))
                cursor = self._flush(step, order, cursor, pending, recorded, out, block=False)
            self._flush(step, order, cursor, pending, recorded, out, block=True)
        finally:
            scorer.close()
        return out

    def _flush(self, step: Step, order: list[tuple[int, int]], cursor: int, pending: dict[tuple[int, int], Any],
               recorded: Mapping[str, Sequence[Event]], out: list[Event], *, block: bool) -> int:
        """Record the outputs ready in request order from ``cursor``; the new cursor."""
        while cursor < len(order):
            k, j = order[cursor]
            aid = row_id(step.tag, k, j, step.requests[k].n)
            if aid in recorded:
                out += recorded[aid]
            elif (k, j) in pending and (block or pending[(k, j)][3].done()):
                gen, bid, row, fut = pending.pop((k, j))
                events = row_events(step, k, j, gen, fut.result(), bid, row)
                self.record(events)
                out += events
            else:
                break
            cursor += 1
        return cursor


def row_events(step: Step, k: int, j: int, gen: Generation, scored: Score, batch: str | None, row: int) -> list[Event]:
    """An output's events: the generate action, the tool calls its scoring made, the trajectory."""
    req, ep = step.requests[k], step.episodes[k]
    n = req.n
    aid = row_id(step.tag, k, j, n)
    outputs: dict[str, Any] = {"text": gen.text, "n_tokens": gen.n_tokens, "finish": gen.finish}
    if gen.raw:
        outputs["raw"] = gen.raw
    inputs = GenerateInputs(messages=req.messages, decoding=req.decoding, seed=req.seed, prefix=step.prefix,
                            n=n if n > 1 else None, sample=j if n > 1 else None, batch=batch, row=row if batch is not None else None,
                            options=req.options)
    events: list[Event] = [ActionTaken(action_id=aid, episode_id=ep.id, version_id=step.version_id, actor="model", name="generate",
                                       inputs=msgspec.to_builtins(inputs), outputs=outputs)]
    tool_ids = tuple(f"{aid}-tool{i}" for i in range(len(scored.tools)))
    for tid, call in zip(tool_ids, scored.tools, strict=True):  # what scoring ran (a sandbox, say)
        events.append(ActionTaken(action_id=tid, episode_id=ep.id, version_id=step.version_id, actor="tool",
                                  name=call.name, inputs=call.inputs, outputs=call.outputs))
    events.append(TrajectoryRecorded(trajectory_id=aid, episode_id=ep.id, split=step.split, version_id=step.version_id,
                                     output=step.prefix + gen.text, score=scored.score, metrics=dict(scored.metrics),
                                     action_ids=(aid, *tool_ids), sample=j, failure=scored.failure))
    return events
