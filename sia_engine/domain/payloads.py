"""Typed records inside events: a generate action's inputs, a tool call, a model's choice.

Events carry these as nested msgspec Structs (or, for an action's ``inputs``, as the JSON object
the Struct encodes to, selected by the action's ``name``), so nothing is read or written as a
loose dict. Field order and defaults are chosen so that the bytes are those older logs hold:
the Structs of a model's choice list their fields alphabetically (the order the canonical
encoder gave the dicts they replace), and a field that older logs left out when empty defaults
to what its absence meant (``omit_defaults``).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from sia_engine.domain.scaffold import Decoding

__all__ = [
    "Message", "GenerateInputs", "ScoreInputs", "ToolCall", "OptionScore", "FreeText", "ChoiceStage", "ModelChoice",
    "Budget", "ArmOverrides", "DataFile", "DataPin", "Environment",
]


class Message(msgspec.Struct, frozen=True):
    """One chat message."""

    role: Literal["system", "user", "assistant"]
    content: str


class GenerateInputs(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """What a ``generate`` action asked of the model: the messages, the decoding, the seed, the
    answer prefix the engine wrote (``""``: none), and for a group of ``n`` samples drawn from one
    seed, which ``sample`` this is (None for a single sample: older logs leave both out). A batched
    generation names its ``batch`` (the step's tag and the batch's index) and the output's
    ``row`` in it: the batch is asked again as one call, whole (logs from before batching, or of
    a serial run, leave both out)."""

    messages: tuple[Message, ...]
    decoding: Decoding
    seed: int
    prefix: str = ""
    n: int | None = None
    sample: int | None = None
    batch: str | None = None
    row: int | None = None
    options: tuple[str, ...] = ()  # a closed set the answer was chosen from, by likelihood (``Request.options``)

    @property
    def sample_seed(self) -> int:
        """The seed that drew this sample (the group's seed plus its index)."""
        return self.seed + (self.sample or 0)


class ScoreInputs(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """What a ``feedback-score`` action asked: the options scored after ``messages`` (and, when
    calibrated, after ``prior_messages``) by ``model`` under ``adapter``."""

    messages: tuple[Message, ...]
    options: tuple[str, ...]
    adapter: str | None
    model: str
    prior_messages: tuple[Message, ...] | None = None


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A tool call that scoring made (a sandbox run, say): recorded as a ``tool`` action."""

    name: str = "tool"
    inputs: dict[str, Any] = {}
    outputs: dict[str, Any] = {}


class OptionScore(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One option's score in a model's choice: the log-probability after the iteration's summary,
    after the bare question (``prior``) and its token count, for a local model; an endpoint
    records the ``score`` only; a bandit its index with ``n``, ``mean`` and ``bonus``."""

    label: str
    logprob: float | None = None
    prior: float | None = None
    score: float
    tokens: int | None = None
    n: int | None = None  # a bandit's choice (``feedback.bandit``): the option's outcomes so far,
    mean: float | None = None  # their mean reward
    bonus: float | None = None  # and its exploration bonus (score = mean + bonus)


class FreeText(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Whether the free text a chosen option asked for was valid, and why not."""

    valid: bool
    why: str


class ChoiceStage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One stage of a model's choice (lever, recipe or change): every option's score, the index
    chosen, the tied best, the rule policy's preferred index and the indices excluded (options
    whose free text was invalid)."""

    chosen: int
    chosen_label: str
    excluded: tuple[int, ...]
    free_text: FreeText | None = None
    method: str
    options: tuple[OptionScore, ...]
    preferred: int | None
    stage: str
    tied: tuple[int, ...]


class ModelChoice(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A model Feedback Agent's constrained choice (empty for any other policy): its stages, the
    tie rule and the lever the rule policy chose on the same iteration."""

    rule_verdict: str = ""
    stages: tuple[ChoiceStage, ...] = ()
    tie_rule: str = ""

    def __bool__(self) -> bool:
        return bool(self.stages)


class Budget(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """What one arm of an experiment may spend on its own branch; an arm stops starting iterations
    once any is spent (an iteration under way finishes). None: no limit (and left out of the
    JSON, as the forks' overrides record it)."""

    model_calls: int | None = None  # generations (training and validation rollouts; test rollouts are not counted)
    train_steps: int | None = None  # LoRA steps
    wall_s: float | None = None  # seconds from the fork

    def spent(self, used: dict[str, float]) -> str:
        """The first limit ``used`` has reached (``""``: none)."""
        for key, limit in (("model_calls", self.model_calls), ("train_steps", self.train_steps), ("wall_s", self.wall_s)):
            if limit is not None and used[key] >= limit:
                return key
        return ""


class ArmOverrides(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a fork made by ``sia experiment`` changes: the experiment, arm and seed it runs, its
    levers and iterations, and the budget that bounds it (``calls``, ``steps``, ``wall``)."""

    experiment: str
    arm: str
    seed: int
    levers: tuple[str, ...]
    iterations: int
    budget: Budget | None = None


class DataFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One file a task read: its name as the task gives it (relative to the data it was given,
    never a local path), its sha256 and its size."""

    name: str
    sha256: str
    size: int


class DataPin(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a run's task was made of: the files it read (a folder's files in the order of their
    relative names), the sha256 of its episodes (every split, canonical JSON: inputs, gold
    answers, meta) and of its split definition (the episode ids of each split, in order)."""

    files: tuple[DataFile, ...] = ()
    episodes: str
    split: str


class Environment(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The software and machine a run recorded on: Python, the platform, the model's device and
    the versions of the libraries its numbers depend on ("" for one not installed)."""

    python: str
    platform: str
    device: str
    packages: dict[str, str] = {}
