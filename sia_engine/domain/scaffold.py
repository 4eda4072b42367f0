"""The scaffold: everything about an agent that is not weights, as one validated document.

Changes are RFC 6902 JSON Patch operations (applied with the ``jsonpatch`` library) on the
document's JSON form; the result is validated against ``Scaffold`` again, so a patch either
yields a valid scaffold or is rejected whole with ``InvalidPatch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import jsonpatch
import jsonpointer
import msgspec

from sia_engine.domain.canonical import digest
from sia_engine.errors import InvalidPatch

__all__ = ["Example", "Decoding", "Scaffold", "PatchOp", "apply_patch", "scaffold_hash"]


class Example(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A few-shot example: an input and the output the agent should give."""

    input: str
    output: str


class Decoding(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the agent's model decodes: temperature, nucleus and top-k cut-offs, a length limit, stops.

    ``n_samples`` is reserved: meant for how many outputs the agent itself draws per question
    (best-of-n or a majority vote at answer time, a choice the scaffold would carry). The engine
    reads it nowhere today: how many samples are drawn is the run's setting (``LoopConfig.samples``
    for training rollouts, ``EvalProtocol.samples`` for the gate, ``Request.n`` to a model). It
    only travels where the whole decoding does (a generate action's recorded inputs, the keys of
    recorded and cached answers, the scaffold JSON that rebuild, diff and the audit show). Like
    every field it is hashed into every agent version id (``scaffold_hash``), so it can never be
    dropped or have its default changed silently: either would change every recorded version id.
    Putting it to use means the same recorded scaffold decodes differently, so say so where the
    change lands (tests/sia_engine/domain/test_reserved_fields.py pins both facts)."""

    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=5.0)] = 0.0
    top_p: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: the backend's default (a local model: 50, as transformers')
    max_new_tokens: Annotated[int, msgspec.Meta(ge=1, le=32768)] = 256
    stop: tuple[str, ...] = ()
    n_samples: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 1


class Scaffold(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything about an agent that is not weights: a system prompt, few-shot examples, an output
    format, the decoding, and a solution template (for tasks whose answer is code).

    ``tools`` is reserved: meant for the tools the agent may call while answering (a name for
    each, with what the model is told about it), a lever the Feedback Agent could patch. The
    engine reads it nowhere today: the agent calls no tools (the tool calls in the log are what a
    task's scorer ran, ``Score.tools``, recorded as ``tool`` actions). It only travels where the
    whole scaffold does (the scaffold JSON that rebuild, diff and the audit show). Like every
    field it is hashed into every agent version id (``scaffold_hash``), so it can never be dropped
    or have its default changed silently: either would change every recorded version id. Putting
    it to use means recorded agents behave differently, so say so where the change lands
    (tests/sia_engine/domain/test_reserved_fields.py pins both facts)."""

    system_prompt: str = ""
    examples: tuple[Example, ...] = ()
    output_format: str = ""
    decoding: Decoding = Decoding()
    tools: dict[str, Any] = {}
    solution_template: str = ""


class PatchOp(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One RFC 6902 operation. ``from_`` is written ``from`` on the wire."""

    op: Literal["add", "remove", "replace", "move", "copy", "test"]
    path: str
    value: Any | msgspec.UnsetType = msgspec.UNSET
    from_: str | None = msgspec.field(default=None, name="from")


_NEEDS_VALUE = {"add", "replace", "test"}
_NEEDS_FROM = {"move", "copy"}


def scaffold_hash(scaffold: Scaffold) -> str:
    return digest(scaffold)


def apply_patch(scaffold: Scaffold, ops: Sequence[PatchOp]) -> Scaffold:
    """The scaffold after ``ops``; raises ``InvalidPatch`` naming the first op that fails."""
    if not ops:
        raise InvalidPatch(None, "it has no operations")
    doc: Any = msgspec.json.decode(msgspec.json.encode(scaffold))  # lists, not tuples
    for i, op in enumerate(ops):
        if op.op in _NEEDS_VALUE and op.value is msgspec.UNSET:
            raise InvalidPatch(i, f"{op.op!r} needs a value")
        if op.op in _NEEDS_FROM and op.from_ is None:
            raise InvalidPatch(i, f"{op.op!r} needs 'from'")
        try:
            # in place: ``doc`` is this call's own copy (jsonpatch would deep-copy it per op, which
            # made a scaffold of n examples cost O(n) Python objects copied per patch)
            doc = jsonpatch.JsonPatch([msgspec.to_builtins(op)]).apply(doc, in_place=True)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
            raise InvalidPatch(i, f"{op.op} {op.path}: {e}") from None
    try:
        new = msgspec.convert(doc, Scaffold)
    except msgspec.ValidationError as e:
        raise InvalidPatch(None, f"the result is not a valid scaffold: {e}") from None
    return _share_examples(scaffold, new)


def _share_examples(old: Scaffold, new: Scaffold) -> Scaffold:
    """``new`` holding ``old``'s example objects where they are equal, position by position from
    the front (``new`` is a fresh decode). A state holds every version's scaffold; a scaffold
    gaining one example per step would otherwise hold n fresh copies of each example by version
    n (2M objects at 2,000 versions), where sharing holds one."""
    o, n = old.examples, new.examples
    k = 0
    for a, b in zip(o, n):
        if a != b:
            break
        k += 1
    if not k:
        return new
    return msgspec.structs.replace(new, examples=o[:k] + n[k:])
