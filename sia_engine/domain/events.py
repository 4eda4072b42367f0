"""Domain events: one frozen msgspec Struct per kind, each a past-tense fact.

Each class has an explicit, stable tag (the ``kind`` stored in the envelope and in the payload)
and a schema version. Renaming a class never changes the tag. Schema evolution: new fields get
defaults, a field never changes type; anything else is a new schema version.

``encode`` turns an event into the store's ``NewEvent`` (canonical bytes, checked to decode back
to the same event); ``decode`` turns kind + schema + payload bytes back into an event, raising
``UnknownEventKind``, ``UnknownSchema`` or ``InvalidPayload`` with the offending path.

Schema evolution, as pyeventsourcing does it: an event stored at an older schema is upcast on
read, one step at a time (``UPCASTERS[(kind, n)]`` turns a schema-n payload into schema n+1), and
then decoded as today's class. Stored bytes are never rewritten (their ids hash them); a schema
newer than this engine's, or an older one without a path of upcasters, is ``UnknownSchema``.
Each kind's reducer is ``_HANDLERS[EventClass]`` (``state.py``), its read models
``projection.readers(kind)``; who produces and replays it: the table in ARCHITECTURE.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec

from sia_engine.domain.canonical import canonical
from sia_engine.domain.payloads import ArmOverrides, DataPin, Environment, GenerateInputs, ModelChoice, ScoreInputs
from sia_engine.domain.scaffold import PatchOp, Scaffold
from sia_engine.domain.upcasters import upcast_feedback_verdict_v1_v2, upcast_run_started_v1_v2
from sia_engine.errors import (
    InvalidEvent,
    InvalidPayload,
    UnknownEventKind,
    UnknownSchema,
)
from store import Envelope, NewEvent

__all__ = [
    "Event",
    "ModelRef",
    "TrainingPlan",
    "RunStarted",
    "IterationStarted",
    "ActionTaken",
    "TrajectoryRecorded",
    "FeedbackVerdict",
    "ScaffoldPatched",
    "AdapterCheckpointed",
    "VersionEvaluated",
    "VersionAccepted",
    "VersionRejected",
    "RolledBack",
    "BranchForked",
    "RunConfigured",
    "BaselineScored",
    "EVENT_TYPES",
    "UPCASTERS",
    "encode",
    "roundtrip",
    "decode",
    "decode_envelope",
]

Hex64 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]  # \Z: "$" would admit a trailing newline
Lever = Literal["scaffold", "weights", "none"]
Split = Literal["train", "val", "test"]
NonNeg = Annotated[int, msgspec.Meta(ge=0)]
_T = TypeVar("_T")


class ModelRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The base model: an id (hub id, folder or preset), a revision, and the sha256 of its weights."""

    id: str
    revision: str = ""
    weights_hash: str = ""


class TrainingPlan(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the weights lever should train on: the trajectories (samples) chosen, and the recipe.

    ``recipe``: ``sft`` (the episodes' gold answers), ``rft`` (rejection-sampling fine-tuning on
    the chosen samples) or ``grpo`` (group-relative policy optimisation on all k samples of each
    chosen episode, with their recorded scores); ``why`` says what in the trajectories chose it.
    ``method`` is what logs written before recipes existed say (gold = sft, rejection_sampling =
    rft); ``effective_recipe`` reads either."""

    trajectory_ids: tuple[str, ...]
    method: Literal["rejection_sampling", "gold"] = "rejection_sampling"
    hyper: dict[str, Any] = {}
    recipe: Literal["sft", "rft", "grpo", ""] = ""
    why: str = ""

    @property
    def effective_recipe(self) -> Literal["sft", "rft", "grpo"]:
        if self.recipe:
            return self.recipe
        return "sft" if self.method == "gold" else "rft"


class Event(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind"):
    """Base of every event. ``SCHEMA`` is the schema version this engine writes and reads."""

    SCHEMA: ClassVar[int] = 1

    @classmethod
    def kind(cls) -> str:
        tag = cls.__struct_config__.tag
        assert isinstance(tag, str)
        return tag

    def blob_refs(self) -> tuple[str, ...]:
        """Blob ids this event references (they must be in the store before it is recorded)."""
        return ()


class RunStarted(Event, tag="run_started", frozen=True):
    """A run begins: task, seed, base model (name and weights sha256), first scaffold, levers,
    settings. Schema 2: ``data`` pins the task's data and ``environment`` the software it ran on
    (``sia_engine.loop.pins``: a resume on other data is refused); None in schema 1 runs."""

    SCHEMA: ClassVar[int] = 2

    run_id: str
    task: str
    seed: int
    base_model: ModelRef
    scaffold: Scaffold
    engine_version: str
    levers: tuple[Literal["scaffold", "weights"], ...]
    config: dict[str, Any] = {}
    data: DataPin | None = None
    environment: Environment | None = None


class IterationStarted(Event, tag="iteration_started", frozen=True):
    """An improvement iteration begins on the head version; ``seed`` drives all of its randomness."""

    iteration: NonNeg
    head_version: Hex64
    seed: int


class ActionTaken(Event, tag="action_taken", frozen=True):
    """A model call or a tool call, with its inputs and outputs. ``inputs`` is the JSON object of
    the Struct that the action's ``name`` selects (``generate``: ``GenerateInputs``;
    ``feedback-score``: ``ScoreInputs``; a tool call: the tool's own ``ToolCall.inputs``): read it
    typed with ``generate_inputs()`` / ``score_inputs()``."""

    action_id: str
    episode_id: str
    version_id: Hex64
    actor: Literal["model", "tool"]
    name: str
    inputs: dict[str, Any] = {}
    outputs: dict[str, Any] = {}

    @property
    def is_generation(self) -> bool:
        """A model generation recorded with its request (older demo logs record a bare prompt)."""
        return self.actor == "model" and self.name == "generate" and "messages" in self.inputs

    def generate_inputs(self) -> GenerateInputs:
        """The request of a ``generate`` action, typed (``InvalidPayload`` if it is not one)."""
        return self._inputs_as(GenerateInputs)

    def score_inputs(self) -> ScoreInputs:
        """The question and options of a ``feedback-score`` action, typed."""
        return self._inputs_as(ScoreInputs)

    def _inputs_as(self, cls: type[_T]) -> _T:
        try:
            return msgspec.convert(self.inputs, cls)
        except msgspec.ValidationError as e:
            raise InvalidPayload(self.kind(), f"$.inputs ({self.action_id}, {self.name})", str(e), None) from None


class TrajectoryRecorded(Event, tag="trajectory_recorded", frozen=True):
    """One output for an episode (sample ``sample`` of the k drawn for it), its score and the
    task's failure class (``failure``: none, format, abstain, content or tampering; empty in older logs)."""

    trajectory_id: str
    episode_id: str
    split: Split
    version_id: Hex64
    output: str
    score: float | None
    metrics: dict[str, float] = {}
    action_ids: tuple[str, ...] = ()
    sample: NonNeg = 0
    failure: Literal["none", "format", "abstain", "content", "tampering", ""] = ""


class FeedbackVerdict(Event, tag="feedback_verdict", frozen=True):
    """The Feedback Agent's decision for the head version. ``valid`` is False for an LLM verdict
    that failed validation (``raw`` keeps what it said); such a verdict is never acted on.
    ``choice`` (a model's constrained choice, ``sia_engine.loop.feedback.model``): the prompt's stages,
    every option with its score, the chosen one and the tie rule, for replay.

    Schema 2: a training plan always names its ``recipe`` (schema 1 plans only said ``method``)."""

    SCHEMA: ClassVar[int] = 2

    version_id: Hex64
    lever: Lever
    rationale: str
    policy: str
    evidence: tuple[str, ...] = ()
    patch: tuple[PatchOp, ...] = ()
    training_plan: TrainingPlan | None = None
    valid: bool = True
    raw: str | None = None
    choice: ModelChoice = ModelChoice()  # a model's constrained choice: each stage's options, scores and the chosen one


class ScaffoldPatched(Event, tag="scaffold_patched", frozen=True):
    """A candidate version: the parent's scaffold with ``ops`` applied, same adapter."""

    parent_version: Hex64
    version_id: Hex64
    ops: tuple[PatchOp, ...]
    scaffold_hash: Hex64


class AdapterCheckpointed(Event, tag="adapter_checkpointed", frozen=True):
    """A candidate version: the parent's scaffold with a new LoRA adapter (a safetensors blob).

    Everything the update used: the ``recipe``, its hyper-parameters (``hyper``), the data
    (``training_data``: trajectory ids, one per sample), the ``seed``, the ``curve`` (loss, and the
    batch's mean recorded score for rft and grpo, per optimiser step), the base model by name and weights sha256
    (``base_model``; never a local path), and where it ran (``device``, ``dtype``)."""

    parent_version: Hex64
    version_id: Hex64
    blob: Hex64
    peft_config: dict[str, Any]
    training_data: tuple[str, ...]
    seed: int
    metrics: dict[str, float] = {}
    parent_adapter: Hex64 | None = None
    recipe: Literal["sft", "rft", "grpo", ""] = ""
    hyper: dict[str, Any] = {}
    curve: tuple[dict[str, float], ...] = ()
    base_model: ModelRef | None = None
    device: str = ""
    dtype: str = ""

    def blob_refs(self) -> tuple[str, ...]:
        return (self.blob,)


class VersionEvaluated(Event, tag="version_evaluated", frozen=True):
    """A version's score on ``split`` under the run's evaluation ``protocol`` (mode greedy, mean
    or best of ``samples`` at ``temperature``; empty in older logs)."""

    version_id: Hex64
    split: Split
    score: float
    n_episodes: NonNeg
    metrics: dict[str, float] = {}
    protocol: dict[str, Any] = {}


class VersionAccepted(Event, tag="version_accepted", frozen=True):
    version_id: Hex64
    previous: Hex64
    score: float
    previous_score: float | None
    margin: float


class VersionRejected(Event, tag="version_rejected", frozen=True):
    version_id: Hex64
    head: Hex64
    score: float | None
    head_score: float | None
    reason: str


class RolledBack(Event, tag="rolled_back", frozen=True):
    """The head moves back to an earlier accepted version (nothing is deleted)."""

    to_version: Hex64
    from_version: Hex64
    reason: str


class BranchForked(Event, tag="branch_forked", frozen=True):
    """First event of a fork: where it grew from and what it changes."""

    source_branch: str
    source_seq: NonNeg
    source_event: Hex64
    reason: str
    overrides: dict[str, Any] = {}

    def arm(self) -> ArmOverrides | None:
        """What an experiment's fork says of its arm (None: a fork not made by an experiment)."""
        if "experiment" not in self.overrides:
            return None
        try:
            return msgspec.convert(self.overrides, ArmOverrides)
        except msgspec.ValidationError as e:
            raise InvalidPayload(self.kind(), "$.overrides", str(e), None) from None


class RunConfigured(Event, tag="run_configured", frozen=True):
    """A fork continues with other run settings (``config`` replaces the run's, ``levers`` its
    levers); recorded by the fork's first run, before its first iteration."""

    config: dict[str, Any]
    levers: tuple[Literal["scaffold", "weights"], ...]
    reason: str


class BaselineScored(Event, tag="baseline_scored", frozen=True):
    """A baseline of an experiment scored on ``split`` (recorded on the experiment's prefix after
    its forks, so no arm sees it): ``method`` (random-search, best-of-k, reference), the ``seed``
    (None: a deterministic method), the test ``score``, the chosen candidate's ``val_score``, how
    many validation ``evaluations`` (answers scored) and ``model_calls`` it used, and ``details``
    (the candidates and their validation scores, what was chosen, the trajectories it drew)."""

    experiment: str
    method: str
    split: Split
    score: float
    seed: NonNeg | None = None
    val_score: float | None = None
    evaluations: NonNeg = 0
    model_calls: NonNeg = 0
    details: dict[str, Any] = {}


EVENT_TYPES: dict[str, type[Event]] = {cls.kind(): cls for cls in Event.__subclasses__()}


Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("feedback_verdict", 1): upcast_feedback_verdict_v1_v2,
    ("run_started", 1): upcast_run_started_v1_v2,
}
_DECODERS = {k: msgspec.json.Decoder(cls) for k, cls in EVENT_TYPES.items()}
_PATH_RE = re.compile(r" - at `(.*)`$")


def decode(kind: str, schema: int, payload: bytes, *, where: str | None = None) -> Event:
    """The event of ``kind`` at ``schema`` in ``payload``; typed errors for anything else."""
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        raise UnknownEventKind(kind, sorted(EVENT_TYPES), where)
    if schema > cls.SCHEMA or not all((kind, n) in UPCASTERS for n in range(schema, cls.SCHEMA)):
        raise UnknownSchema(kind, schema, cls.SCHEMA, where)
    try:
        if schema == cls.SCHEMA:
            return _DECODERS[kind].decode(payload)
        data = msgspec.json.decode(payload)
        if not isinstance(data, dict):
            raise InvalidPayload(kind, "$", "not a JSON object", where)
        for n in range(schema, cls.SCHEMA):  # one step at a time: n -> n+1
            data = UPCASTERS[(kind, n)](data)
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as e:
        msg = str(e)
        m = _PATH_RE.search(msg)
        path = m.group(1) if m else "$"
        reason = msg[: m.start()] if m else msg
        raise InvalidPayload(kind, path, reason, where) from None
    except msgspec.DecodeError as e:
        raise InvalidPayload(kind, "$", f"not valid JSON: {e}", where) from None


def decode_envelope(env: Envelope) -> Event:
    return decode(env.kind, env.schema, env.payload, where=f"{env.ref} ({env.id})")


def roundtrip(event: Event) -> tuple[NewEvent, Event]:
    """Canonical bytes for ``event`` and the event decoded back from them.

    The decoded event is what a replay will see (sequences inside free-form fields come back as
    lists, for instance), so that is the one to apply to live state."""
    if not isinstance(event, Event) or EVENT_TYPES.get(kind := event.kind()) is not type(event):
        raise InvalidEvent(type(event).__name__, "not an event type of this engine")
    try:
        payload = canonical(event)
    except (TypeError, msgspec.EncodeError) as e:
        raise InvalidEvent(kind, f"a field holds a value that has no JSON form ({e})") from None
    try:  # at the class's own schema: its typed decoder, no upcasting to look for
        back: Event = _DECODERS[kind].decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        m = _PATH_RE.search(msg := str(e))
        reason, path = (msg[: m.start()], m.group(1)) if m else (msg, "$")
        raise InvalidEvent(kind, f"{reason} (at {path}); non-finite floats are not allowed") from None
    return NewEvent(kind, event.SCHEMA, payload), back


def encode(event: Event) -> NewEvent:
    """Canonical bytes for ``event``, checked to decode back into a valid event."""
    return roundtrip(event)[0]
