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
from sia_engine.domain.state import AgentState, apply
from sia_engine.loop.feedback.model import scored_options
from sia_engine.loop.loop import load_adapter
from sia_engine.models.protocol import Model, Request, ScoresOptions
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
        if isinstance(e, ActionTaken) and e.is_generation:
            adapters[e.version_id] = state.versions[e.version_id].adapter
            inp = e.generate_inputs()
            key = (e.version_id, msgspec.json.encode([inp.messages, inp.decoding, inp.prefix]).decode(), inp.seed, inp.n or 1)
            groups.setdefault(key, []).append((f"{env.branch}#{env.seq}", e))
        elif isinstance(e, ActionTaken) and e.actor == "model" and e.name == "feedback-score" and "options" in e.inputs \
                and "index" not in e.outputs:  # log-likelihood scores (an endpoint's choice has an index instead)
            scored.append((f"{env.branch}#{env.seq}", e))
    done = same = 0
    first: dict[str, Any] | None = None
    scorer = model.score_options if isinstance(model, ScoresOptions) else None  # an endpoint's choices are not re-asked
    for where, a in scored:
        if scorer is None or (limit is not None and done >= limit):
            break
        asked = a.score_inputs()
        model.set_adapter(load_adapter(store.blobs, asked.adapter))
        rows = scored_options(scorer, asked.messages, asked.options, asked.prior_messages)
        scores = [r.score for r in rows]
        done += 1
        if scores == list(a.outputs.get("scores", [])):
            same += 1
        elif first is None:
            first = {"at": where, "version": a.version_id, "recorded": a.outputs.get("scores"), "reexecuted": scores}
    for (vid, _, seed, n), actions in groups.items():
        if limit is not None and done >= limit:
            break
        inp = actions[0][1].generate_inputs()
        req = Request(inp.messages, inp.decoding, seed=seed, prefix=inp.prefix, n=n)
        model.set_adapter(load_adapter(store.blobs, adapters[vid]))
        gens = model.generate([req])
        for where, a in actions:
            j = a.generate_inputs().sample or 0
            got, want = gens[j].text, a.outputs.get("text", "")
            done += 1
            if got == want:
                same += 1
            elif first is None:
                first = {"at": where, "version": vid, "sample": j, "recorded": want, "reexecuted": got}
    return ReexecuteReport(branch, done, same, first)
