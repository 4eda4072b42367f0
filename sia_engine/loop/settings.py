"""What defines a run: the gate's evaluation protocol and the loop's settings, checked before a
run records anything. (``sia_engine.loop.loop`` re-exports them.)"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from sia_engine.domain.scaffold import Decoding
from sia_engine.errors import InvalidSettings
from sia_engine.models.protocol import LoraSettings

__all__ = ["EvalProtocol", "LoopConfig", "check_settings"]

Count = Annotated[int, msgspec.Meta(ge=1, le=100_000)]


class EvalProtocol(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the gate scores a version on validation episodes: ``greedy`` (one output at
    temperature 0), or the ``mean`` / ``best`` of ``samples`` outputs per episode at
    ``temperature`` (None: the scaffold's decoding temperature, so the scaffold lever may change
    it; at temperature 0 one output stands for all). Seeds are the same for every version."""

    mode: Literal["greedy", "mean", "best"] = "mean"
    samples: Annotated[int, msgspec.Meta(ge=1, le=256)] = 4
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] | None = None

    def effective(self, decoding: Decoding) -> tuple[Decoding, int]:
        """The decoding and number of samples per episode for a scaffold's ``decoding``."""
        if self.mode == "greedy":
            return msgspec.structs.replace(decoding, temperature=0.0), 1
        t = decoding.temperature if self.temperature is None else self.temperature
        return msgspec.structs.replace(decoding, temperature=t), (self.samples if t > 0 else 1)


class LoopConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What defines a run. Budgets (``iterations``, ``wall_time_s``) may change on resume;
    everything else must match the run recorded in the store.

    ``samples`` outputs per training episode are drawn at ``temperature`` (exploration for the
    weights lever); ``eval`` is the gate's protocol; ``recipe`` forces a training recipe
    (``auto``: the Feedback Agent chooses). ``batch_rows``: model rows per generation batch
    (``sia_engine.loop.batches``); 0 generates one request at a time as before batching, the
    setting a run recorded before it existed resumes with."""

    task: str
    levers: Annotated[tuple[Literal["scaffold", "weights"], ...], msgspec.Meta(min_length=1)] = ("scaffold", "weights")
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0
    train_episodes: Count = 8
    val_episodes: Count = 8
    margin: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    lora: LoraSettings = LoraSettings()
    feedback: Literal["rule", "llm", "bandit"] = "rule"
    iterations: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 3
    wall_time_s: Annotated[float, msgspec.Meta(gt=0.0)] | None = None
    samples: Annotated[int, msgspec.Meta(ge=1, le=256)] = 4
    temperature: Annotated[float, msgspec.Meta(gt=0.0, le=2.0)] = 0.7
    eval: EvalProtocol = EvalProtocol()
    recipe: Literal["auto", "sft", "rft", "grpo"] = "auto"
    batch_rows: Annotated[int, msgspec.Meta(ge=0, le=4096)] = 32

    def recorded(self) -> dict[str, Any]:
        d: dict[str, Any] = msgspec.to_builtins(self)
        d.pop("iterations")
        d.pop("wall_time_s")
        if not d["batch_rows"]:  # one request at a time: what runs recorded before batching did
            d.pop("batch_rows")
        if not d["lora"]["packing"]:  # padded batches: what runs recorded before packing did
            d["lora"].pop("packing")
        return d

    @classmethod
    def from_recorded(cls, config: dict[str, Any], levers: tuple[str, ...]) -> LoopConfig:
        """The settings a run recorded (``recorded()``'s inverse): a setting it left out ran as
        before the setting existed (no batching, no packing)."""
        d: dict[str, Any] = {**config, "levers": list(levers)}
        d.setdefault("batch_rows", 0)
        d["lora"] = {"packing": False, **(d.get("lora") or {})}
        return msgspec.convert(d, cls)


def check_settings(config: LoopConfig) -> LoopConfig:
    """``config`` if every setting is in range, else ``InvalidSettings`` naming the first one.

    msgspec checks the bounds when it converts, not when a Struct is built in code, so the
    config goes through a conversion here, before a run records anything."""
    try:
        checked = msgspec.convert(msgspec.to_builtins(config), LoopConfig)
    except msgspec.ValidationError as e:
        msg = str(e)
        path = msg.rsplit(" - at `$.", 1)[-1].rstrip("`") if " - at `$." in msg else "config"
        value: Any = msgspec.to_builtins(config)
        for part in path.replace("[", ".").replace("]", "").split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
        raise InvalidSettings(path, value, msg.split(" - at `")[0]) from None
    if checked.recipe == "grpo" and checked.samples < 2:
        raise InvalidSettings("samples", checked.samples, "the grpo recipe compares k >= 2 samples per episode; use --samples 2 or more")
    return checked
