"""The ``Model`` protocol that every backend honours, its value types, and a scripted model.

A model turns chat requests into generations. Backends that own their weights (the local
Hugging Face backend, the scripted model) also train LoRA adapters and switch between them;
those that do not (an OpenAI-compatible endpoint) serve the scaffold lever only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import msgspec

from sia_engine.domain.events import ModelRef
from sia_engine.domain.payloads import Message
from sia_engine.domain.scaffold import Decoding

__all__ = [
    "Message",
    "Request",
    "Generation",
    "TrainExample",
    "Recipe",
    "LoraSettings",
    "TrainedAdapter",
    "Adapter",
    "Model",
    "ScoresOptions",
    "ChoosesOption",
    "ServesOnDevice",
    "CountsPromptTokens",
    "GeneratesSerially",
    "Labelled",
    "ScriptedModel",
]


class Request(msgspec.Struct, frozen=True):
    """One generation request; ``seed`` drives sampling when ``decoding.temperature > 0``.

    A backend answers ``n`` generations for the request, in order; sample ``j`` is drawn from
    seed ``seed + j``. One ``generate`` call is one batch: a local model's outputs are a pure
    function of the call's requests, all of them in order (its arithmetic depends on the batch's
    shape), which is why the loop plans batches and records each output's batch and row."""

    messages: tuple[Message, ...]
    decoding: Decoding
    seed: int
    prefix: str = ""  # text the engine puts at the start of the answer (e.g. a JSON opening)
    n: int = 1
    options: tuple[str, ...] = ()  # a closed set: answer with one of them, by likelihood (``sia_engine.models.options``)


class Generation(msgspec.Struct, frozen=True):
    text: str
    n_tokens: int = 0
    finish: str = "stop"
    raw: dict[str, Any] = {}  # backend-specific record (an HTTP exchange, for instance)


class TrainExample(msgspec.Struct, frozen=True):
    """A prompt and a completion; ``source`` names where it came from (a trajectory id).

    For ``sft`` and ``rft`` the adapter learns the completion. For ``grpo`` the completion is one
    sampled output with its ``reward``, and ``group`` names the samples drawn for the same prompt
    (advantages are relative to the group's mean)."""

    messages: tuple[Message, ...]
    completion: str
    source: str = ""
    reward: float | None = None
    group: str = ""
    prefix: str = ""  # the answer's opening, written by the engine: part of the prompt, not learned


Recipe = Literal["sft", "rft", "grpo"]
Pos = Annotated[int, msgspec.Meta(ge=1)]


class LoraSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """LoRA and optimiser settings of one update; the bounds are checked (``check_settings``)
    before a run records anything."""

    r: Annotated[int, msgspec.Meta(ge=1, le=512)] = 8
    alpha: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 16
    target_modules: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)] = ("q_proj", "k_proj", "v_proj", "o_proj")
    lr: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 3e-4
    steps: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 8
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 4
    max_length: Annotated[int, msgspec.Meta(ge=8, le=131_072)] = 256
    # rft: keep samples above the head's mean score (0) or this top fraction of them
    rft_top: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    # grpo: KL coefficient against the parent (0: none, as TRL's default) and PPO clip range
    grpo_beta: Annotated[float, msgspec.Meta(ge=0.0, le=10.0)] = 0.0
    grpo_epsilon: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 0.2
    # sft / rft: a batch's examples packed into one sequence (no padding; attention kept within
    # each example by its positions); False pads them to the longest, as runs before packing did
    packing: bool = True


class TrainedAdapter(msgspec.Struct, frozen=True):
    """A LoRA adapter as safetensors bytes, its peft config, training metrics, the curve (one
    dict per optimiser step: ``step``, ``loss`` and, for grpo, ``reward``), and where it was
    trained (``device``, ``dtype``)."""

    tensors: bytes
    peft_config: dict[str, Any]
    metrics: dict[str, float]
    curve: tuple[dict[str, float], ...] = ()
    device: str = "cpu"
    dtype: str = "float32"


class Adapter(msgspec.Struct, frozen=True):
    """An adapter to activate: its blob id, bytes and peft config."""

    blob: str
    tensors: bytes
    peft_config: dict[str, Any]


@runtime_checkable
class Model(Protocol):
    ref: ModelRef
    trains_weights: bool

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """One generation per request, in order."""
        ...

    def set_adapter(self, adapter: Adapter | None) -> None:
        """Serve with ``adapter`` (None: the base weights)."""
        ...

    def train_adapter(
        self,
        examples: Sequence[TrainExample],
        settings: LoraSettings,
        *,
        seed: int,
        parent: Adapter | None = None,
        on_step: Callable[[int, float], None] | None = None,
        recipe: Recipe = "sft",
    ) -> TrainedAdapter:
        """Train a LoRA adapter (from ``parent`` when given) with ``recipe``; deterministic for a seed."""
        ...


# Optional features of a model, each checked with ``isinstance`` where it is used.


@runtime_checkable
class ScoresOptions(Protocol):
    """A model that scores answers it is given (a local model: it owns its log-likelihoods)."""

    def score_options(self, messages: Sequence[Message], options: Sequence[str]) -> list[tuple[float, int]]:
        """(log-likelihood, tokens) of each option as the answer to ``messages``."""
        ...


@runtime_checkable
class ChoosesOption(Protocol):
    """A model that picks one of the options itself (an OpenAI-compatible endpoint)."""

    def choose(self, messages: Sequence[Message], options: Sequence[str]) -> tuple[int | None, list[float], dict[str, Any]]:
        """(the chosen index or None when the answer was no option, each option's score, the exchange)."""
        ...


@runtime_checkable
class ServesOnDevice(Protocol):
    """A model whose weights sit on a device here ("cpu", "cuda", "mps")."""

    device: str


@runtime_checkable
class CountsPromptTokens(Protocol):
    """A model that says how many tokens a prompt takes (the loop buckets batches by it)."""

    def prompt_tokens(self, messages: Sequence[Message], prefix: str = "") -> int: ...


@runtime_checkable
class GeneratesSerially(Protocol):
    """A model that keeps its generation from before batching (one sampled request at a time),
    for runs recorded with it and for comparison (``--batch-rows 0``)."""

    def generate_serial(self, requests: Sequence[Request]) -> list[Generation]: ...


@runtime_checkable
class Labelled(Protocol):
    """A model with a caveat to show before it runs (e.g. "smoke-test model: random weights"; "" for none)."""

    label: str


class ScriptedModel:
    """A model whose answers come from a function: for tests, benchmarks and examples.

    ``respond(request, adapter_blob)`` returns the text. Training "learns" by hashing the
    examples into a small deterministic tensor file, so adapters and versions are real and
    distinct, at no cost."""

    trains_weights = True

    def __init__(self, respond: Callable[[Request, str | None], str], *, name: str = "scripted",
                 loglik: Callable[[tuple[Message, ...], str, str | None], float] | None = None) -> None:
        self.ref = ModelRef(id=f"scripted/{name}", revision="1", weights_hash="")
        self._respond = respond
        self._loglik = loglik
        self.adapter: str | None = None
        self.calls = 0

    def score_options(self, messages: Sequence[Message], options: Sequence[str]) -> list[tuple[float, int]]:
        """(log-likelihood, tokens) of each option as the answer: ``loglik(messages, option,
        adapter)`` over a token per word (no ``loglik``: 0 for every option, all equal)."""
        out = []
        for o in options:
            self.calls += 1
            n = max(1, len(o.split()))
            out.append(((self._loglik(tuple(messages), o, self.adapter) if self._loglik else 0.0) * n, n))
        return out

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """``n`` answers per request; sample ``j`` sees the request with ``n=1`` and seed ``seed + j``."""
        out = []
        for r in requests:
            for j in range(r.n):
                self.calls += 1
                one = r if r.n == 1 else msgspec.structs.replace(r, n=1, seed=r.seed + j)
                text = self._respond(one, self.adapter)
                if r.options and text not in r.options:  # a closed set: the option its answer names, else the first
                    text = next((o for o in r.options if o in text), r.options[0])
                out.append(Generation(text, finish="option" if r.options else "stop"))
        return out

    def set_adapter(self, adapter: Adapter | None) -> None:
        self.adapter = None if adapter is None else adapter.blob

    def train_adapter(
        self,
        examples: Sequence[TrainExample],
        settings: LoraSettings,
        *,
        seed: int,
        parent: Adapter | None = None,
        on_step: Callable[[int, float], None] | None = None,
        recipe: Recipe = "sft",
    ) -> TrainedAdapter:
        import numpy as np
        import safetensors.numpy

        digest = hashlib.sha256(
            json.dumps([msgspec.to_builtins(e) for e in examples], sort_keys=True).encode() + f"{seed}:{recipe}".encode()
            + (parent.blob.encode() if parent else b"")
        ).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        if not examples:
            raise ValueError("no training examples: the training plan selected none")
        curve = []
        for step in range(settings.steps):
            curve.append({"step": float(step + 1), "loss": 1.0 / (step + 1)})
            if on_step:
                on_step(step + 1, 1.0 / (step + 1))
        tensors = {"lora_A": rng.standard_normal((settings.r, 4)).astype(np.float32)}
        return TrainedAdapter(
            safetensors.numpy.save(tensors), {"peft_type": "LORA", "r": settings.r, "scripted": True, "base_model_name_or_path": self.ref.id},
            {"loss": 0.0, "steps": float(settings.steps), "examples": float(len(examples))}, tuple(curve),
        )
