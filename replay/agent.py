"""Rebuild a runnable agent version from the log into a folder, every part checked.

The folder holds ``scaffold.json`` (the scaffold document), ``adapter/`` in peft's own layout
(``adapter_model.safetensors`` + ``adapter_config.json``, loadable with
``PeftModel.from_pretrained(base, folder / "adapter")``) when the version has an adapter, and
``agent.json``: the version id, the base model's name, revision and weights sha256, the adapter's
blob hash and provenance (recipe, seed, training data, device), and the branch and event it was
rebuilt at. Checks: the version id recomputes from (base model, scaffold, adapter); every blob
re-hashes to its id (``BlobCorrupt`` otherwise); the adapter's recorded base model matches the
run's; and, when the caller gives the weights hash of the base model at hand, that it is the one
the log names. A mismatch is ``RebuildMismatch`` naming the part.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from replay.errors import RebuildMismatch, check_out_folder
from replay.rebuild import locate
from sia_engine.domain.events import AdapterCheckpointed
from sia_engine.domain.projection import AdaptersTrained, project
from sia_engine.domain.state import Version, version_id
from store import Store
from store.blobs import safetensors_metadata
from store.files import atomic_write

__all__ = ["rebuild_agent"]


def _provenance(store: Store, branch: str, version: Version) -> dict[str, Any]:
    """The update that trained the version's adapter (its own, or an ancestor's it inherited)."""
    if version.adapter is None:
        return {}
    found: tuple[str, AdapterCheckpointed] | None = None
    [adapters] = project(store.log, branch, AdaptersTrained())
    for event_id, e in adapters:
        if e.version_id == version.version_id or (e.blob == version.adapter and found is None):
            found = (event_id, e)
    if found is None:
        return {}
    event_id, e = found
    return {"event": event_id, "recipe": e.recipe or "rft", "seed": e.seed, "training_data": list(e.training_data),
            "hyper": e.hyper, "device": e.device, "dtype": e.dtype, "parent_adapter": e.parent_adapter}


def rebuild_agent(store: Store, ref: str, out: str | Path, *, branch: str = "main", base_weights_hash: str | None = None) -> dict[str, Any]:
    """Write the agent version ``ref`` (a version id or prefix in ``branch``, or ``BRANCH#SEQ`` of an
    event about a version: its adapter's checkpoint, its evaluation) to ``out``; returns
    what ``agent.json`` holds. ``out`` must be a new or empty folder outside the store (``OutputRefused``)."""
    from replay.rebuild import state_at

    folder = check_out_folder(out, store.root)
    found = locate(store.log, ref, branch=branch)
    v = found.version
    if v is None and found.event is not None:
        branch = found.branch or branch
    state = state_at(store.log, branch)
    if v is None and found.event is not None:  # an event about a version (its adapter's checkpoint, its evaluation): that version
        named = msgspec.json.decode(found.event.payload)
        about = named.get("version_id") if isinstance(named, dict) else None
        v = state.versions.get(about) if isinstance(about, str) else None
    if v is None:
        raise RebuildMismatch("reference", "an agent version", f"an event ({ref}) that names none; give a version id or prefix, "
                              "or the ref of an event about a version (BRANCH#SEQ)")
    assert state.run is not None
    base = state.run.base_model
    vid = version_id(base, v.scaffold, v.adapter)
    if vid != v.version_id:
        raise RebuildMismatch("version id", v.version_id, vid, "the base model, scaffold and adapter hash to another id")
    if base_weights_hash is not None and base_weights_hash != base.weights_hash:
        raise RebuildMismatch(f"base model {base.id!r} weights sha256", base.weights_hash, base_weights_hash,
                              "the model at hand is not the one this history was recorded with")
    agent: dict[str, Any] = {
        "version": v.version_id, "branch": branch, "lever": v.lever, "status": v.status,
        "base_model": msgspec.to_builtins(base), "adapter": v.adapter, "scores": {e.split: e.score for e in v.evaluations},
    }
    files: dict[str, bytes] = {"scaffold.json": msgspec.json.format(msgspec.json.encode(v.scaffold), indent=2) + b"\n"}
    if v.adapter is not None:  # every check before anything is written
        data = store.blobs.get(v.adapter)  # re-hashed on read: BlobCorrupt names the blob
        meta = safetensors_metadata(data)
        recorded_base = meta.get("base_model")
        if recorded_base is not None and recorded_base != base.id:
            raise RebuildMismatch("adapter's base model", base.id, recorded_base)
        weights = meta.get("base_model_weights_sha256")
        if weights is not None and weights != base.weights_hash:
            raise RebuildMismatch("adapter's base model weights sha256", base.weights_hash, weights)
        if "peft_config" not in meta:  # a `sia demo` adapter is a stand-in: weights, no peft config
            raise RebuildMismatch("adapter's peft config", "one in the adapter file's metadata", "none",
                                  "this adapter was not trained by a peft backend (a `sia demo` history records stand-ins); "
                                  "it cannot be rebuilt into a folder peft loads")
        peft_config = json.loads(meta["peft_config"])
        peft_config["base_model_name_or_path"] = base.id  # a name, never a local path
        files["adapter/adapter_model.safetensors"] = data
        files["adapter/adapter_config.json"] = (json.dumps(peft_config, indent=2, sort_keys=True) + "\n").encode()
        agent["provenance"] = _provenance(store, branch, v)
    files["agent.json"] = (json.dumps(agent, indent=2, sort_keys=True) + "\n").encode()
    for name, content in files.items():
        atomic_write(folder / name, content)
    return agent
