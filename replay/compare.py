"""An event the replayed loop records against the log's: field by field, the first difference a
``ReplayDivergence`` with a path into the event."""

from __future__ import annotations

from typing import Any

import msgspec

from replay.stand_ins import ReplayDivergence
from sia_engine.domain.events import AdapterCheckpointed, Event, ScaffoldPatched, VersionAccepted, VersionRejected, roundtrip

__all__ = ["compare"]


def _first_path(a: Any, b: Any, path: str) -> tuple[str, Any, Any]:
    """Where two JSON values first differ: (path, value here, value there)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k, ...) != b.get(k, ...):
                return _first_path(a.get(k), b.get(k), f"{path}.{k}")
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_path(x, y, f"{path}[{i}]")
    return path, a, b


_DERIVED = ("blob", "scaffold_hash", "version_id")
# settings added after logs were recorded, with the value those logs ran with: a key the log lacks
# is the same as this value (an adapter trained before packing existed was trained unpacked)
_ADDED: dict[tuple[str, str], dict[str, Any]] = {("adapter_checkpointed", "hyper"): {"packing": False}}


def _as_recorded(kind: str, name: str, made: Any, recorded: Any) -> Any:
    """``made`` less the keys a log recorded before they existed left out, where it holds their value then."""
    added = _ADDED.get((kind, name))
    if not added or not isinstance(made, dict) or not isinstance(recorded, dict):
        return made
    return {k: v for k, v in made.items() if not (k in added and k not in recorded and v == added[k])}


def compare(where: str, made: Event, recorded: Event) -> None:
    """``made`` (what the loop records here) against ``recorded`` (the log), field by field."""
    if type(made) is not type(recorded):
        decision = (VersionAccepted, VersionRejected)
        if isinstance(made, decision) and isinstance(recorded, decision):
            word = {VersionAccepted: "accepted", VersionRejected: "rejected"}
            raise ReplayDivergence(where, "gate decision", word[type(made)], word[type(recorded)])
        raise ReplayDivergence(where, "event", made.kind(), recorded.kind(), "the loop records another step here")
    canon = roundtrip(made)[1]
    fields = canon.__struct_fields__
    if isinstance(made, (ScaffoldPatched, AdapterCheckpointed)):  # what makes a version first, the ids that follow from it last
        fields = tuple(sorted(fields, key=lambda f: _DERIVED.index(f) if f in _DERIVED else -1))
    for name in fields:
        a, b = msgspec.to_builtins(getattr(canon, name)), msgspec.to_builtins(getattr(recorded, name))
        a = _as_recorded(made.kind(), name, a, b)
        if a != b:
            path, x, y = _first_path(a, b, name)
            raise ReplayDivergence(where, path, x, y)
