"""The bytes a snapshot caches a state (or a delta on one) as, and back.

A state holds every version's whole scaffold. When scaffolds grow (a few-shot example added per
iteration) that is quadratic: 500 versions of a scaffold gaining one example each hold 125k
example references, 31 MB of JSON per snapshot written plainly. Such states are cached in a
chained form: a version's scaffold that is its parent's (or an earlier one's) with examples
appended is written as the index of that scaffold plus the appended examples, so the bytes grow
with the examples, not with versions x examples. Small states are plain canonical JSON.

Forms (the first byte says which): ``{`` canonical JSON; ``C`` chained (written today);
``S`` shared (each distinct example once, scaffolds as lists of example indices: written by
earlier engines, still read). The store compresses whatever it is given (zstd) on its own.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sia_engine.domain.canonical import canonical
from sia_engine.domain.scaffold import Example, Scaffold
from sia_engine.domain.state import AgentState, Version

__all__ = ["StateDelta", "encode_cached", "decode_state", "decode_delta"]


class StateDelta(msgspec.Struct, frozen=True):
    """A cached state stored as what changed since a full snapshot (``base_*``): the versions
    that are new or changed, what follows the base's ``head_history`` and ``forks``, and every
    other field whole. A full state grows with the versions it holds (1 MB at 1M synthetic events);
    a delta holds the few since its base, so snapshots can be dense without filling the disk."""

    base_branch: str
    base_seq: int
    base_event: str
    state: AgentState


_STATE_DECODER = msgspec.json.Decoder(AgentState)
_DELTA_DECODER = msgspec.json.Decoder(StateDelta)
_SHARED = b"S"
_CHAINED = b"C"
_CHAIN_ABOVE = 256  # example references in the state before the chained form is used
_EMPTY = Scaffold()


def decode_state(data: bytes) -> AgentState:
    """A snapshot's bytes back into the state they cache."""
    if data[:1] == _CHAINED:
        state: AgentState = _unchain(data, AgentState)
        return state
    if data[:1] == _SHARED:
        return msgspec.convert(_unshare(data), AgentState)
    return _STATE_DECODER.decode(data)


def decode_delta(data: bytes) -> StateDelta:
    if data[:1] == _CHAINED:
        delta: StateDelta = _unchain(data, StateDelta)
        return delta
    if data[:1] == _SHARED:
        return msgspec.convert(_unshare(data), StateDelta)
    return _DELTA_DECODER.decode(data)


def encode_cached(obj: AgentState | StateDelta) -> bytes:
    """The bytes a snapshot stores for ``obj``: canonical JSON, or the chained form (see above)."""
    state = obj.state if isinstance(obj, StateDelta) else obj
    if sum(len(v.scaffold.examples) for v in state.versions.values()) <= _CHAIN_ABOVE:
        return canonical(obj)
    entries: list[Any] = []  # each scaffold once: a whole one, or {"base": i, "add": [examples]}
    where: dict[int, int] = {}  # id(scaffold object) -> its entry
    keep: list[Scaffold] = []  # the scaffolds indexed by id(), alive while ``where`` is
    versions: dict[str, Any] = {}
    for v in sorted(state.versions.values(), key=lambda v: v.index):
        sc = v.scaffold
        i = where.get(id(sc))
        if i is None:
            parent = state.versions.get(v.parent) if v.parent is not None else None
            j = None if parent is None else where.get(id(parent.scaffold))
            entries.append(_entry(sc, None if j is None else (j, keep[j])))
            where[id(sc)] = i = len(keep)
            keep.append(sc)
        tree = msgspec.to_builtins(msgspec.structs.replace(v, scaffold=_EMPTY))
        tree["scaffold"] = i
        versions[v.version_id] = tree
    bare = msgspec.structs.replace(state, versions={})
    top = msgspec.to_builtins(msgspec.structs.replace(obj, state=bare) if isinstance(obj, StateDelta) else bare)
    (top["state"] if isinstance(obj, StateDelta) else top)["versions"] = versions
    return _CHAINED + canonical({"scaffolds": entries, "obj": top})


def _entry(sc: Scaffold, base: tuple[int, Scaffold] | None) -> Any:
    """``sc`` as ``base``'s scaffold with examples appended, where it is one; else whole."""
    if base is not None:
        j, b = base
        k = len(b.examples)
        same = (sc.system_prompt, sc.output_format, sc.decoding, sc.tools, sc.solution_template) == (
            b.system_prompt, b.output_format, b.decoding, b.tools, b.solution_template
        )
        if same and len(sc.examples) >= k and sc.examples[:k] == b.examples:
            return {"base": j, "add": msgspec.to_builtins(sc.examples[k:])}
    return msgspec.to_builtins(sc)


_REFS_PER_BYTE = 16  # example references a chained document may build per byte of it (see ``_unchain_doc``)


def _unchain(data: bytes, typ: type[Any]) -> Any:
    try:
        return _unchain_doc(msgspec.json.decode(data[1:]), typ, _REFS_PER_BYTE * len(data) + 1_000_000)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RecursionError) as e:  # another shape
        raise msgspec.ValidationError(f"not a chained snapshot ({type(e).__name__}: {e})") from None


def _unchain_doc(doc: Any, typ: type[Any], budget: int) -> Any:
    """The object of a chained document. Each scaffold entry costs a reference per example it
    holds; a document that would build more than ``budget`` (a few entries chained on one long
    scaffold claim quadratic memory from linear bytes) is refused. A real state of 10,000
    versions of scaffolds growing to 10,000 examples builds about 8 references per byte."""
    scaffolds: list[Scaffold] = []
    for i, e in enumerate(doc["scaffolds"]):
        if isinstance(e, dict) and set(e) == {"base", "add"}:
            j = e["base"]
            if type(j) is not int or not 0 <= j < i:
                raise ValueError(f"scaffold {i} is chained on {j!r}, not an earlier scaffold")
            b = scaffolds[j]
            add = msgspec.convert(e["add"], tuple[Example, ...])
            scaffolds.append(msgspec.structs.replace(b, examples=b.examples + add))
        else:
            scaffolds.append(msgspec.convert(e, Scaffold))
        budget -= len(scaffolds[-1].examples)
        if budget < 0:
            raise ValueError("it builds more example references than its size allows (a forged or damaged document)")
    top = doc["obj"]
    versions = (top["state"] if typ is StateDelta else top)["versions"]
    which = {vid: tree.pop("scaffold") for vid, tree in versions.items()}
    for tree in versions.values():
        tree["scaffold"] = {}
    obj = msgspec.convert(top, typ)
    state: AgentState = obj.state if typ is StateDelta else obj
    restored: dict[str, Version] = {vid: msgspec.structs.replace(v, scaffold=scaffolds[which[vid]]) for vid, v in state.versions.items()}
    state = msgspec.structs.replace(state, versions=restored)
    return msgspec.structs.replace(obj, state=state) if typ is StateDelta else state


def _unshare(data: bytes) -> Any:
    """The shared form (earlier engines) back into a plain tree."""
    doc = msgspec.json.decode(data[1:])
    ex_list = doc["examples"]
    scaffolds = [{**sc, "examples": [ex_list[i] for i in sc["examples"]]} for sc in doc["scaffolds"]]
    tree = doc["obj"]
    versions = (tree["state"] if "base_branch" in tree else tree)["versions"]
    for v in versions.values():
        v["scaffold"] = scaffolds[v["scaffold"]]
    return tree
