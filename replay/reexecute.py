"""Re-execution: rebuild each version of a branch, re-run its recorded model calls, and measure
how many outputs come back identical (reproducibility measured, not claimed).

Every recorded ``generate`` action names its version, prompt, decoding, seed, sample index and
group size; the requests of one group are asked again as one request (the backend draws a
group's samples together), under the version's adapter loaded from its blob. A model Feedback
Agent's option scores (``feedback-score`` actions, log-likelihood) are computed again under the
adapter it was served with, and compared exactly. The report gives the share identical and the
first output (or score list) that differs.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sia_engine.domain.events import ActionTaken, decode_envelope
from sia_engine.domain.scaffold import Decoding
from sia_engine.domain.state import AgentState, apply
from sia_engine.loop.feedback.model import scored_options
from sia_engine.loop.loop import load_adapter
from sia_engine.models.protocol import Message, Model, Request
from store import Store

__all__ = ["ReexecuteReport", "reexecute"]


class ReexecuteReport(msgspec.Struct, frozen=True):
    branch: str
    outputs: int
    identical: int
    first_divergence: dict[str, Any] | None = None

    @property
    def share_identical(self) -> float:
        return self.identical / self.outputs if self.outputs else 1.0


def reexecute(store: Store, branch: str, model: Model, *, limit: int | None = None) -> ReexecuteReport:
    """Re-run up to ``limit`` recorded outputs of ``branch`` (all when None) with ``model``."""
    groups: dict[tuple[str, str, int, int], list[tuple[str, ActionTaken]]] = {}
    state = AgentState()
    adapters: dict[str, str | None] = {}
    scored: list[tuple[str, ActionTaken]] = []
    for env in store.log.read(branch):
        e = decode_envelope(env)
        state = apply(state, e)
        if isinstance(e, ActionTaken) and e.actor == "model" and e.name == "generate" and "messages" in e.inputs:
            adapters[e.version_id] = state.versions[e.version_id].adapter
            inp = e.inputs
            key = (e.version_id, msgspec.json.encode([inp["messages"], inp["decoding"], inp.get("prefix", "")]).decode(),
                   int(inp["seed"]), int(inp.get("n", 1)))
            groups.setdefault(key, []).append((f"{env.branch}#{env.seq}", e))
        elif isinstance(e, ActionTaken) and e.actor == "model" and e.name == "feedback-score" and "options" in e.inputs \
                and "index" not in e.outputs:  # log-likelihood scores (an endpoint's choice has an index instead)
            scored.append((f"{env.branch}#{env.seq}", e))
    done = same = 0
    first: dict[str, Any] | None = None
    scorer = getattr(model, "score_options", None)
    for where, a in scored if scorer is not None else ():
        if limit is not None and done >= limit:
            break
        model.set_adapter(load_adapter(store.blobs, a.inputs.get("adapter")))
        prior = a.inputs.get("prior_messages")
        rows = scored_options(scorer, msgspec.convert(a.inputs["messages"], tuple[Message, ...]), a.inputs["options"],
                              None if prior is None else msgspec.convert(prior, tuple[Message, ...]))
        got = [r["score"] for r in rows]
        done += 1
        if got == list(a.outputs.get("scores", [])):
            same += 1
        elif first is None:
            first = {"at": where, "version": a.version_id, "recorded": a.outputs.get("scores"), "reexecuted": got}
    for (vid, _, seed, n), actions in groups.items():
        if limit is not None and done >= limit:
            break
        inp = actions[0][1].inputs
        req = Request(tuple(msgspec.convert(m, Message) for m in inp["messages"]), msgspec.convert(inp["decoding"], Decoding),
                      seed=seed, prefix=inp.get("prefix", ""), n=n)
        model.set_adapter(load_adapter(store.blobs, adapters[vid]))
        gens = model.generate([req])
        for where, a in actions:
            j = int(a.inputs.get("sample", 0))
            got, want = gens[j].text, a.outputs.get("text", "")
            done += 1
            if got == want:
                same += 1
            elif first is None:
                first = {"at": where, "version": vid, "sample": j, "recorded": want, "reexecuted": got}
    return ReexecuteReport(branch, done, same, first)
