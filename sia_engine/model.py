"""The ``Model`` protocol that every backend honours, its value types, and a scripted model.

A model turns chat requests into generations. Backends that own their weights (the local
Hugging Face backend, the scripted model) also train LoRA adapters and switch between them;
those that do not (an OpenAI-compatible endpoint) serve the scaffold lever only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

from sia_engine.events import ModelRef
from sia_engine.scaffold import Decoding

__all__ = [
    "Message",
    "Request",
    "Generation",
    "TrainExample",
    "LoraSettings",
    "TrainedAdapter",
    "Adapter",
    "Model",
    "ScriptedModel",
]


class Message(msgspec.Struct, frozen=True):
    role: Literal["system", "user", "assistant"]
    content: str


class Request(msgspec.Struct, frozen=True):
    """One generation request; ``seed`` drives sampling when ``decoding.temperature > 0``."""

    messages: tuple[Message, ...]
    decoding: Decoding
    seed: int
    prefix: str = ""  # text the engine puts at the start of the answer (e.g. a JSON opening)


class Generation(msgspec.Struct, frozen=True):
    text: str
    n_tokens: int = 0
    finish: str = "stop"
    raw: dict[str, Any] = {}  # backend-specific record (an HTTP exchange, for instance)


class TrainExample(msgspec.Struct, frozen=True):
    """A prompt and the completion the adapter should learn; ``source`` names where it came from."""

    messages: tuple[Message, ...]
    completion: str
    source: str = ""


class LoraSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    r: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    lr: float = 3e-4
    steps: int = 8
    batch_size: int = 4
    max_length: int = 256


class TrainedAdapter(msgspec.Struct, frozen=True):
    """A LoRA adapter as safetensors bytes, its peft config, and training metrics."""

    tensors: bytes
    peft_config: dict[str, Any]
    metrics: dict[str, float]


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
    ) -> TrainedAdapter:
        """Train a LoRA adapter (from ``parent`` when given); deterministic for a seed."""
        ...


class ScriptedModel:
    """A model whose answers come from a function: for tests, benchmarks and examples.

    ``respond(request, adapter_blob)`` returns the text. Training "learns" by hashing the
    examples into a small deterministic tensor file, so adapters and versions are real and
    distinct, at no cost."""

    trains_weights = True

    def __init__(self, respond: Callable[[Request, str | None], str], *, name: str = "scripted") -> None:
        self.ref = ModelRef(id=f"scripted/{name}", revision="1", weights_hash="")
        self._respond = respond
        self.adapter: str | None = None
        self.calls = 0

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        self.calls += len(requests)
        return [Generation(self._respond(r, self.adapter)) for r in requests]

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
    ) -> TrainedAdapter:
        import numpy as np
        import safetensors.numpy

        digest = hashlib.sha256(
            json.dumps([msgspec.to_builtins(e) for e in examples], sort_keys=True).encode() + str(seed).encode()
            + (parent.blob.encode() if parent else b"")
        ).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        for step in range(settings.steps):
            if on_step:
                on_step(step + 1, 1.0 / (step + 1))
        tensors = {"lora_A": rng.standard_normal((settings.r, 4)).astype(np.float32)}
        return TrainedAdapter(
            safetensors.numpy.save(tensors), {"peft_type": "LORA", "r": settings.r, "scripted": True}, {"loss": 0.0}
        )
