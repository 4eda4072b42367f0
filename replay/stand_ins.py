"""What recorded replay gives the loop in place of a model, a scorer, a store and a history, so
that the loop's own step functions run against a recorded branch (``replay.recorded``).

- ``ReplayModel`` answers each step's generations with the outputs the log recorded for the
  very same requests, and a model Feedback Agent's questions with the option scores it recorded;
  it trains an adapter by handing back the recorded one (``retrain``: by training it again with
  a real model). It reports each prompt's place in the recorded batches as its length, so the
  loop's own planner cuts the batches again and the rows it records are checked.
- ``ReplayTask`` is the task, except that an output the step recorded scores as recorded (its
  score, failure class, metrics and the tool calls scoring made); recorded replay re-scores
  every output with the real scorer separately.
- ``CheckedHistory`` is the history the loop records into: each event is compared, field by
  field, with the next one in the log before it is applied; the first difference is
  ``ReplayDivergence``.
- ``ScratchBlobs``: the blobs the replayed loop writes, in memory (the store is only read).
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from replay.errors import ReplayError
from sia_engine.domain.events import (
    ActionTaken,
    AdapterCheckpointed,
    BranchForked,
    Event,
    FeedbackVerdict,
    ModelRef,
    TrajectoryRecorded,
)
from sia_engine.domain.history import History
from sia_engine.domain.payloads import Message, ToolCall
from sia_engine.domain.projection import Recorded
from sia_engine.domain.scaffold import Scaffold
from sia_engine.domain.state import AgentState
from sia_engine.loop.task import Episode, Score, Task, answer_options
from sia_engine.models.protocol import Adapter, Generation, LoraSettings, Model, Recipe, Request, TrainedAdapter, TrainExample
from store import BlobStore, EventLog
from store.errors import BlobNotFound

__all__ = ["ReplayDivergence", "AdapterDiffers", "LogEnds", "NotRecorded", "ReplayModel", "ReplayChooser", "ReplayTask",
           "CheckedHistory", "ScratchBlobs", "first_tensor_difference"]


class ReplayDivergence(ReplayError):
    """The first disagreement between the log and its recomputation: at ``seq`` (``BRANCH#SEQ``),
    ``field`` recomputes to ``expected`` where the log says ``got``."""

    def __init__(self, seq: str, field: str, expected: Any, got: Any, detail: str = "") -> None:
        self.seq = seq
        self.field = field
        self.expected = expected
        self.got = got
        super().__init__(f"replay diverges at {seq}: {field} recomputes to {_short(expected)}, the log says {_short(got)}" + (f"; {detail}" if detail else ""))


def _short(value: Any, limit: int = 400) -> str:
    """A value's repr for a message, cut (the error keeps it whole): a recorded output can be long."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class AdapterDiffers(ReplayDivergence):
    """An adapter trained again from its recorded data, seed and settings (``--retrain``) is not
    the recorded one: ``version`` names it, ``tensor`` the first tensor (in name order) that differs."""

    def __init__(self, seq: str, version: str, expected: str, got: str, tensor: str) -> None:
        self.version, self.tensor = version, tensor
        super().__init__(seq, "blob", expected, got, f"the adapter of version {version[:12]} trained again differs first in tensor {tensor!r}")


class LogEnds(Exception):
    """The branch ends inside a step (a run that stopped and was not resumed)."""


class NotRecorded(Exception):
    """The replayed loop asked the model something its step never recorded."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(what)


def _key(*parts: Any) -> bytes:
    return msgspec.json.encode(msgspec.to_builtins(parts))


def _batch_index(batch: str | None) -> int:
    return int(batch.rsplit("/", 1)[1]) if batch and batch.rsplit("/", 1)[-1].isdigit() else 0


def strip_metadata(data: bytes) -> bytes:
    """A safetensors file without its string metadata (the loop writes its own)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def first_tensor_difference(a: bytes, b: bytes) -> str:
    """The first tensor (in name order) whose dtype, shape or bytes differ between two safetensors
    files ("" when every tensor is the same: the metadata differs)."""
    import safetensors.numpy

    ta, tb = safetensors.numpy.load(a), safetensors.numpy.load(b)
    for name in sorted(set(ta) | set(tb)):
        x, y = ta.get(name), tb.get(name)
        if x is None or y is None or x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return name
    return ""


class ScratchBlobs(BlobStore):
    """The blobs a replayed loop writes, in memory; ``source`` (the store's blobs) is never written."""

    def __init__(self) -> None:
        super().__init__(Path("/nonexistent/sia-replay-scratch"))
        self.data: dict[str, bytes] = {}

    def put(self, data: bytes, *, suffix: str = "bin") -> str:
        blob_id = hashlib.sha256(data).hexdigest()
        self.data[blob_id] = bytes(data)
        return blob_id

    def exists(self, blob_id: str) -> bool:
        return blob_id in self.data

    def get(self, blob_id: str) -> bytes:
        if blob_id not in self.data:
            raise BlobNotFound(blob_id, "the replay's scratch blobs")
        return self.data[blob_id]


class _Served:
    """What both replay models share: generations, prompt lengths and training from the log."""

    trains_weights = True

    def __init__(self, ref: ModelRef, blobs: BlobStore, retrain: Model | None = None) -> None:
        self.ref = ref
        self.blobs = blobs
        self.retrain = retrain
        self._gens: dict[bytes, deque[Generation]] = defaultdict(deque)
        self._place: dict[bytes, int] = {}
        self._groups = 0
        self._training: AdapterCheckpointed | None = None
        self.train_seconds: list[float] = []
        self.step_rows = 0  # the outputs the step under way recorded

    def load_step(self, events: Iterable[Event]) -> None:
        """A step's recorded generations, in the order its batches asked them."""
        self._gens.clear()
        self._place.clear()
        self.step_rows = 0
        rows: list[tuple[int, int, int, ActionTaken]] = []
        for i, e in enumerate(events):
            if isinstance(e, ActionTaken) and e.is_generation:
                inp = e.generate_inputs()
                rows.append((_batch_index(inp.batch), inp.row if inp.row is not None else i, i, e))
        # The loop asked in request order and its planner sorted by (prompt length, request order):
        # in the order generated, a new length starts where the request order goes back. Each
        # prompt's place is that length's rank, so copies of one prompt (best-of-k asks each
        # validation prompt many times) and prompts of equal length interleave as they did.
        self._groups, last = 0, -1
        for _, _, i, a in sorted(rows, key=lambda r: r[:3]):
            inp = a.generate_inputs()
            if i < last:
                self._groups += 1
            last = i
            self._place.setdefault(_key(inp.messages, inp.prefix), self._groups)
            o = a.outputs
            gen = Generation(o.get("text", ""), n_tokens=o.get("n_tokens", 0), finish=o.get("finish", "stop"), raw=o.get("raw", {}))
            self._gens[_key(inp.messages, inp.decoding, inp.prefix, inp.sample_seed)].append(gen)
            self.step_rows += 1

    def load_writes(self, actions: Iterable[ActionTaken]) -> None:
        """A model Feedback Agent's recorded free texts (``feedback-write``: one greedy request each)."""
        for a in actions:
            req = msgspec.convert(a.inputs.get("request", {}), Request)
            gen = Generation(a.outputs.get("text", ""), raw=a.outputs.get("raw", {}))
            self._gens[_key(req.messages, req.decoding, req.prefix, req.seed)].append(gen)

    def load_training(self, event: AdapterCheckpointed | None) -> None:
        self._training = event

    def prompt_tokens(self, messages: Sequence[Message], prefix: str = "") -> int:
        """The prompt's place in the step's recorded batches (the loop's planner sorts by it)."""
        return self._place.get(_key(tuple(messages), prefix), self._groups + 1)

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        out = []
        for r in requests:
            for j in range(r.n):
                q = self._gens.get(_key(r.messages, r.decoding, r.prefix, r.seed + j))
                if not q:
                    raise NotRecorded(f"a generation (seed {r.seed + j}) for a prompt ending {r.messages[-1].content[-60:]!r}")
                out.append(q.popleft())
        return out

    def generate_serial(self, requests: Sequence[Request]) -> list[Generation]:
        return self.generate(requests)

    def set_adapter(self, adapter: Adapter | None) -> None:
        return None  # outputs come from the log, whichever adapter made them

    def train_adapter(self, examples: Sequence[TrainExample], settings: LoraSettings, *, seed: int, parent: Adapter | None = None,
                      on_step: Callable[[int, float], None] | None = None, recipe: Recipe = "sft") -> TrainedAdapter:
        if self.retrain is not None:  # trained again: the blob must come out the same
            t0 = time.perf_counter()
            trained = self.retrain.train_adapter(examples, settings, seed=seed, parent=parent, recipe=recipe)
            self.train_seconds.append(time.perf_counter() - t0)
            return trained
        e = self._training
        if e is None:
            raise NotRecorded("an adapter trained where the log records none")
        return TrainedAdapter(strip_metadata(self.blobs.get(e.blob)), dict(e.peft_config), dict(e.metrics), tuple(e.curve),
                              device=e.device, dtype=e.dtype)


class ReplayModel(_Served):
    """Serves recorded outputs (see the module's docstring); scores options as a local model did."""

    def __init__(self, ref: ModelRef, blobs: BlobStore, retrain: Model | None = None) -> None:
        super().__init__(ref, blobs, retrain)
        self._scores: dict[bytes, deque[list[tuple[float, int]]]] = defaultdict(deque)

    def load_feedback(self, actions: Sequence[ActionTaken], verdicts: Sequence[FeedbackVerdict]) -> None:
        """Each option-scoring question's recorded answers: the stages of the verdicts' choices
        (a stage that re-chooses after an invalid free text asked nothing), in order."""
        self._scores.clear()
        asked = [a for a in actions if a.name == "feedback-score"]
        stages = [st for v in verdicts for st in v.choice.stages if not st.excluded]
        for a, st in zip(asked, stages, strict=False):
            inp = a.score_inputs()
            self._scores[_key(inp.messages, inp.options)].append([(r.logprob or 0.0, r.tokens or 0) for r in st.options])
            if inp.prior_messages is not None:
                self._scores[_key(inp.prior_messages, inp.options)].append([(r.prior or 0.0, r.tokens or 0) for r in st.options])
        self.load_writes(a for a in actions if a.name == "feedback-write")

    def score_options(self, messages: Sequence[Message], options: Sequence[str]) -> list[tuple[float, int]]:
        q = self._scores.get(_key(tuple(messages), tuple(options)))
        if not q:
            raise NotRecorded(f"option scores for {list(options)!r}")
        return q.popleft()


class ReplayChooser(_Served):
    """Serves recorded outputs; chooses options as an endpoint did (its recorded answers)."""

    def __init__(self, ref: ModelRef, blobs: BlobStore, retrain: Model | None = None) -> None:
        super().__init__(ref, blobs, retrain)
        self._choices: dict[bytes, deque[tuple[int | None, list[float], dict[str, Any]]]] = defaultdict(deque)

    def load_feedback(self, actions: Sequence[ActionTaken], verdicts: Sequence[FeedbackVerdict]) -> None:
        self._choices.clear()
        for a in actions:
            if a.name == "feedback-score":
                inp = a.score_inputs()
                o = a.outputs
                self._choices[_key(inp.messages, inp.options)].append((o.get("index"), list(o.get("scores", [])), dict(o.get("raw", {}))))
        self.load_writes(a for a in actions if a.name == "feedback-write")

    def choose(self, messages: Sequence[Message], options: Sequence[str]) -> tuple[int | None, list[float], dict[str, Any]]:
        q = self._choices.get(_key(tuple(messages), tuple(options)))
        if not q:
            raise NotRecorded(f"a choice among {list(options)!r}")
        return q.popleft()


class ReplayTask:
    """The task, with the scores a step recorded served for its outputs (see the module's docstring)."""

    concurrent_scoring = False  # scored in request order, as the log records them

    def __init__(self, task: Task, scores: dict[tuple[str, str], Score]) -> None:
        self.task = task
        self.name, self.description = task.name, task.description
        self.format_hint, self.answer_prefix = task.format_hint, task.answer_prefix
        self._scores = scores  # the real scorer's, computed once per (episode, output)
        self._served: dict[tuple[str, str], deque[Score]] = defaultdict(deque)

    def load_step(self, events: Sequence[Event]) -> None:
        self._served.clear()
        tools = {e.action_id: e for e in events if isinstance(e, ActionTaken) and e.actor == "tool"}
        for e in events:
            if isinstance(e, TrajectoryRecorded):
                calls = tuple(ToolCall(name=t.name, inputs=t.inputs, outputs=t.outputs) for a in e.action_ids if (t := tools.get(a)) is not None)
                failure: Any = e.failure
                self._served[(e.episode_id, e.output)].append(Score(e.score, failure, dict(e.metrics), calls))  # type: ignore[arg-type]

    def score(self, episode: Episode, output: str) -> Score:
        q = self._served.get((episode.id, output))
        if q:
            return q.popleft()
        key = (episode.id, output)
        if key not in self._scores:
            self._scores[key] = self.task.score(episode, output)
        return self._scores[key]

    def episodes(self, split: Literal["train", "val", "test"]) -> list[Episode]:
        return self.task.episodes(split)

    def messages(self, scaffold: Scaffold, episode: Episode) -> tuple[Message, ...]:
        return self.task.messages(scaffold, episode)

    def parse_answer(self, output: str) -> Any | None:
        return self.task.parse_answer(output)

    def reference_baselines(self, split: Literal["train", "val", "test"]) -> dict[str, float]:
        return self.task.reference_baselines(split)

    def scaffold(self) -> Scaffold:
        return self.task.scaffold()

    def answer_options(self, episode: Episode) -> tuple[str, ...]:
        return answer_options(self.task, episode)  # the task's closed set, where it has one


class CheckedHistory(History):
    """The history a replayed loop records into: every event is compared with the log's next
    (``check``) before it is applied; events the loop does not make (a fork, a rollback, new
    settings) are applied as recorded (``apply_recorded``)."""

    def __init__(self, log: EventLog, branch: str, blobs: BlobStore, recs: Sequence[Recorded],
                 check: Callable[[Recorded, Event], None]) -> None:
        super().__init__(log, branch, AgentState(), None, blobs=blobs, snapshot_every=0)
        self.recs = recs
        self.at = 0
        self.check = check

    def peek(self, k: int = 0) -> Recorded | None:
        return self.recs[self.at + k] if self.at + k < len(self.recs) else None

    def record(self, *events: Event) -> list[str]:
        ids: list[str] = []
        pending: list[Event] = []
        for ev in events:
            while (nxt := self.peek()) is not None and isinstance(nxt.event, BranchForked):  # a fork point inside a step
                ids += super().record(*pending)
                pending = []
                self.apply_recorded()
            if nxt is None:
                super().record(*pending)  # what was checked is applied: the state is the log's up to its end
                raise LogEnds()
            self.check(nxt, ev)
            self.at += 1
            pending.append(ev)
        return ids + super().record(*pending)

    def apply_recorded(self) -> None:
        """The log's next event, applied as it is (the reducer still checks it)."""
        rec = self.recs[self.at]
        self.at += 1
        super().record(rec.event)
