"""``RecordedModel``: a model that serves the answers a run recorded, so a history can be
re-executed offline (no network, no weights): ``sia replay --mode reexecute`` with an endpoint's
run, and tests that resume a run without its model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from sia_engine.domain.events import ActionTaken, ModelRef
from sia_engine.errors import NoRecordedResponse
from sia_engine.models.openai_compat import WeightsUnsupported, inputs_key
from sia_engine.models.protocol import Generation, Request

__all__ = ["RecordedModel", "NoRecordedResponse"]


class RecordedModel(WeightsUnsupported):
    """Serves the answers a run recorded, keyed by (messages, decoding, seed): replay offline."""

    def __init__(self, ref: ModelRef, actions: Iterable[ActionTaken]) -> None:
        self.ref = ref
        self._answers: dict[str, Generation] = {}
        for a in actions:
            if a.is_generation:
                inp = a.generate_inputs()
                key = inputs_key(msgspec.to_builtins(inp.messages), msgspec.to_builtins(inp.decoding), inp.sample_seed)
                o = a.outputs
                self._answers[key] = Generation(o["text"], n_tokens=o.get("n_tokens", 0), finish=o.get("finish", "stop"), raw=o.get("raw", {}))

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        out = []
        for r in requests:
            for j in range(r.n):  # sample j was asked with seed + j
                key = inputs_key(msgspec.to_builtins(r.messages), msgspec.to_builtins(r.decoding), r.seed + j)
                if key not in self._answers:
                    raise NoRecordedResponse(len(self._answers))
                out.append(self._answers[key])
        return out
