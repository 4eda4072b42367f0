"""Two agent versions side by side (``diff``), and branches side by side per iteration (``compare``).

``diff_versions``: the scaffolds as a unified text diff of their JSON, the adapters as the norm of
each module's LoRA update ``delta W = B @ A * alpha / r`` in either version and of their
difference (a version without an adapter has none), and the recorded scores. ``compare_branches``:
for each iteration of each branch, the lever pulled, the candidate's score, the gate's decision
and the head's score after it. Both read the log only.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

import msgspec
import numpy as np

from replay.rebuild import locate
from sia_engine.domain.events import (
    AdapterCheckpointed,
    FeedbackVerdict,
    IterationStarted,
    ScaffoldPatched,
    VersionAccepted,
    VersionRejected,
)
from sia_engine.domain.projection import Projection, Recorded, StateProjection, project
from sia_engine.domain.state import AgentState, Version
from store import EventLog, Store
from store.blobs import safetensors_metadata

__all__ = ["diff_versions", "compare_branches", "adapter_deltas"]


def adapter_deltas(data: bytes) -> dict[str, np.ndarray]:
    """Module name -> its LoRA update ``B @ A * alpha / r`` (fp32), from adapter blob bytes."""
    import safetensors.numpy

    tensors = safetensors.numpy.load(data)
    cfg = json.loads(safetensors_metadata(data).get("peft_config", "{}"))
    scale = float(cfg.get("lora_alpha", 1)) / float(cfg.get("r", 1) or 1)
    out = {}
    for name, a in tensors.items():
        if ".lora_A." in name:
            module = name.split(".lora_A.")[0].removeprefix("base_model.model.")
            b = tensors.get(name.replace(".lora_A.", ".lora_B."))
            if b is not None:
                out[module] = (b.astype(np.float32) @ a.astype(np.float32)) * scale
    return out


def _version(store: Store, ref: str, branch: str) -> Version:
    found = locate(store.log, ref, branch=branch)
    if found.version is None:
        from replay.errors import RebuildMismatch

        raise RebuildMismatch("reference", "an agent version", f"an event ({ref}); give a version id or prefix")
    return found.version


def _scaffold_text(v: Version) -> list[str]:
    return msgspec.json.format(msgspec.json.encode(v.scaffold), indent=2).decode().splitlines(keepends=True)


def diff_versions(store: Store, a: str, b: str, *, branch: str = "main") -> dict[str, Any]:
    va, vb = _version(store, a, branch), _version(store, b, branch)
    text = "".join(difflib.unified_diff(_scaffold_text(va), _scaffold_text(vb), fromfile=f"scaffold {va.version_id[:12]}",
                                        tofile=f"scaffold {vb.version_id[:12]}"))
    da = adapter_deltas(store.blobs.get(va.adapter)) if va.adapter else {}
    db = adapter_deltas(store.blobs.get(vb.adapter)) if vb.adapter else {}
    modules = []
    for m in sorted(set(da) | set(db)):
        x, y = da.get(m), db.get(m)
        diff = (0 if x is None else x) - (0 if y is None else y)  # a module one side lacks counts as zero there
        modules.append({"module": m, "norm_a": float(np.linalg.norm(x)) if x is not None else 0.0,
                        "norm_b": float(np.linalg.norm(y)) if y is not None else 0.0, "norm_diff": float(np.linalg.norm(diff))})
    return {
        "a": {"version": va.version_id, "lever": va.lever, "status": va.status, "adapter": va.adapter,
              "scores": {e.split: e.score for e in va.evaluations}},
        "b": {"version": vb.version_id, "lever": vb.lever, "status": vb.status, "adapter": vb.adapter,
              "scores": {e.split: e.score for e in vb.evaluations}},
        "scaffold_diff": text,
        "adapter_modules": modules,
    }


class IterationRows(Projection[list[dict[str, Any]]]):
    """One row per iteration of a branch: lever, recipe, candidate score, decision, and the head's
    score after it (``INITIAL`` until a candidate is accepted: the initial version's score, which
    ``compare_branches`` fills in from the state)."""

    kinds = frozenset({"iteration_started", "feedback_verdict", "adapter_checkpointed", "scaffold_patched", "version_accepted",
                       "version_rejected"})
    INITIAL = "initial"

    def __init__(self, branch: str) -> None:
        self.branch = branch

    def initial(self) -> list[dict[str, Any]]:
        return []

    def apply(self, rows: list[dict[str, Any]], r: Recorded) -> list[dict[str, Any]]:
        e = r.event
        if isinstance(e, IterationStarted):
            head = rows[-1]["head_score"] if rows else self.INITIAL
            rows.append({"branch": self.branch, "iteration": e.iteration, "from": r.branch, "lever": "none", "recipe": "",
                         "candidate_score": None, "decision": "none", "head_score": head})
        elif not rows:
            pass
        elif isinstance(e, FeedbackVerdict) and e.valid:
            rows[-1]["lever"] = e.lever
        elif isinstance(e, AdapterCheckpointed):
            rows[-1]["recipe"] = e.recipe or "rft"
        elif isinstance(e, ScaffoldPatched):
            rows[-1]["recipe"] = ""
        elif isinstance(e, VersionAccepted):
            rows[-1].update(candidate_score=e.score, decision="accepted", head_score=e.score)
        elif isinstance(e, VersionRejected):
            rows[-1].update(candidate_score=e.score, decision="rejected")
        return rows

    @classmethod
    def finish(cls, rows: list[dict[str, Any]], state: AgentState) -> list[dict[str, Any]]:
        """The rows with the initial version's validation score where no candidate was accepted yet."""
        initial = state.ordered_versions()[0].score("val") if state.versions else None
        for row in rows:
            if row["head_score"] == cls.INITIAL:
                row["head_score"] = initial
        return rows


def compare_branches(store: Store | EventLog, branches: list[str]) -> list[dict[str, Any]]:
    """One row per (branch, iteration): lever, recipe, candidate score, decision, head score after."""
    log: EventLog = store.log if isinstance(store, Store) else store
    rows = []
    for branch in branches:
        state, mine = project(log, branch, StateProjection(), IterationRows(branch))
        rows += IterationRows.finish(mine, state)
    return rows
