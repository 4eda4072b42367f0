"""Re-execution: rebuild each version of a branch, re-run its recorded model calls, and measure
how many outputs come back identical (reproducibility measured, not claimed).

Every recorded ``generate`` action names its version, prompt, decoding, seed, sample index and
group size, and, when it was generated in a batch, the batch and its row there: a batch is asked
again whole, as one call, its requests rebuilt in row order (a model's outputs depend on the
batch's shape); an output without a batch (a serial run, or one recorded before batching) is
asked again alone, its group's samples together, through ``generate_serial`` where the model
keeps it. Each runs under the version's adapter loaded from its blob. A batch the log holds
only part of (a run that stopped mid-batch and never resumed) cannot be rebuilt: its outputs
are counted in ``skipped``. A model Feedback
Agent's option scores (``feedback-score`` actions, log-likelihood) are computed again under the
adapter it was served with, and compared exactly. The report gives the share identical and the
first output (or score list) that differs.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sia_engine.domain.events import ActionTaken, ModelRef, decode_envelope
from sia_engine.domain.projection import AdaptersTrained, project
from sia_engine.domain.state import AgentState, apply
from sia_engine.loop.feedback.model import scored_options
from sia_engine.loop.loop import load_adapter
from sia_engine.loop.pins import environment, environment_differences
from sia_engine.domain.payloads import GenerateInputs
from sia_engine.models.protocol import GeneratesSerially, Model, Request, ScoresOptions
from store import Store

__all__ = ["ReexecuteReport", "reexecute", "software_differences", "load_base_model"]

PRESETS = {"tiny": "tiny", "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2"}  # a recorded base model's id -> the preset that loads it


class ReexecuteReport(msgspec.Struct, frozen=True):
    branch: str
    outputs: int
    identical: int
    first_divergence: dict[str, Any] | None = None
    skipped: int = 0  # outputs of batches the log holds only part of

    @property
    def share_identical(self) -> float:
        return self.identical / self.outputs if self.outputs else 1.0


Job = tuple[str, bool, list[tuple[str, ActionTaken, GenerateInputs]]]  # version, batched, its outputs


def _jobs(store: Store, branch: str) -> tuple[list[Job], dict[str, str | None], list[tuple[str, ActionTaken]]]:
    """The branch's generations as calls to make again (a batch, or a group of one request),
    each version's adapter, and the option-scoring actions."""
    jobs: list[Job] = []
    where_is: dict[tuple[object, ...], int] = {}
    key: tuple[object, ...]
    state = AgentState()
    adapters: dict[str, str | None] = {}
    scored: list[tuple[str, ActionTaken]] = []
    for env in store.log.read(branch):
        e = decode_envelope(env)
        state = apply(state, e)
        if isinstance(e, ActionTaken) and e.is_generation:
            adapters[e.version_id] = state.versions[e.version_id].adapter
            inp = e.generate_inputs()
            if inp.batch is not None:
                key = (e.version_id, "batch", inp.batch)
            else:
                key = (e.version_id, msgspec.json.encode([inp.messages, inp.decoding, inp.prefix]).decode(), inp.seed, inp.n or 1)
            i = where_is.get(key)
            rows = [x[2].row or 0 for x in jobs[i][2]] if i is not None else []
            if i is None or (inp.batch is not None and (inp.row or 0) <= max(rows)):  # a batch id met again: another call
                where_is[key] = i = len(jobs)
                jobs.append((e.version_id, inp.batch is not None, []))
            jobs[i][2].append((f"{env.branch}#{env.seq}", e, inp))
        elif isinstance(e, ActionTaken) and e.actor == "model" and e.name == "feedback-score" and "options" in e.inputs \
                and "index" not in e.outputs:  # log-likelihood scores (an endpoint's choice has an index instead)
            scored.append((f"{env.branch}#{env.seq}", e))
    return jobs, adapters, scored


def _requests(outputs: list[tuple[str, ActionTaken, GenerateInputs]]) -> list[Request] | None:
    """A batch's requests in row order (None when rows are missing: it cannot be rebuilt)."""
    outputs.sort(key=lambda x: x[2].row or 0)
    if [x[2].row for x in outputs] != list(range(len(outputs))):
        return None
    reqs: list[Request] = []
    for _, _, inp in outputs:
        if not inp.sample:  # the first sample of a request (or a single one)
            reqs.append(Request(inp.messages, inp.decoding, seed=inp.seed, prefix=inp.prefix, n=inp.n or 1, options=inp.options))
    return reqs


def reexecute(store: Store, branch: str, model: Model, *, limit: int | None = None) -> ReexecuteReport:
    """Re-run up to ``limit`` recorded outputs of ``branch`` (all when None) with ``model``."""
    jobs, adapters, scored = _jobs(store, branch)
    done = same = skipped = 0
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
    for vid, batched, outputs in jobs:
        if limit is not None and done >= limit:
            break
        if batched:
            reqs = _requests(outputs)
            if reqs is None:
                skipped += len(outputs)
                continue
        else:
            inp = outputs[0][2]
            reqs = [Request(inp.messages, inp.decoding, seed=inp.seed, prefix=inp.prefix, n=inp.n or 1, options=inp.options)]
        model.set_adapter(load_adapter(store.blobs, adapters[vid]))
        gens = model.generate_serial(reqs) if not batched and isinstance(model, GeneratesSerially) else model.generate(reqs)
        for where, a, inp in outputs:
            got, want = gens[(inp.row or 0) if batched else (inp.sample or 0)].text, a.outputs.get("text", "")
            done += 1
            if got == want:
                same += 1
            elif first is None:
                first = {"at": where, "version": vid, "sample": inp.sample or 0, "recorded": want, "reexecuted": got}
    return ReexecuteReport(branch, done, same, first, skipped)


def software_differences(store: Store, branch: str, model: Model) -> list[str]:
    """How the software and device here differ from what ``branch`` recorded, in words, said
    before a re-execution or a retraining starts (outputs and adapters are promised bit for bit
    only on the same ones)."""
    from replay.rebuild import state_at

    run = state_at(store.log, branch).run
    if run is None:
        return []
    out = (environment_differences(run.environment, environment(model)) if run.environment is not None
           else ["the run recorded no environment (run_started schema 1): its software cannot be compared"])
    [adapters] = project(store.log, branch, AdaptersTrained())
    here = (getattr(model, "device", ""), getattr(model, "dtype_name", ""))
    for what, recorded, now in (("device", {e.device for _, e in adapters}, here[0]), ("dtype", {e.dtype for _, e in adapters}, here[1])):
        other = sorted(x for x in recorded if x and now and x != now)
        if other:
            out.append(f"adapters were trained with {what} {', '.join(other)}; {now} here")
    return out


def load_base_model(base: ModelRef, spec: str | None = None) -> Model:
    """The run's base model to run again (``spec``: tiny | smollm2 | a folder | a cached hub id;
    default: the preset of the recorded id), refused unless its weights hash is the recorded one."""
    from replay.errors import RebuildMismatch, ReplayError
    from sia_engine.models.presets import load_model

    spec = spec or PRESETS.get(base.id)
    if spec is None:
        raise ReplayError(f"the run's base model is {base.id!r}: give it with --model (a folder or a cached hub id)")
    model = load_model(spec, device="cpu")
    if model.ref.weights_hash != base.weights_hash:
        raise RebuildMismatch(f"base model {base.id!r} weights sha256", base.weights_hash, model.ref.weights_hash)
    return model
