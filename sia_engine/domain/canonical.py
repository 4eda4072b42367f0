"""Canonical bytes and hashes: msgspec JSON with deterministic key order, hashed with sha256."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec

__all__ = ["canonical", "digest", "noncanonical"]

_ENCODER = msgspec.json.Encoder(order="deterministic")


def canonical(obj: Any) -> bytes:
    """Canonical JSON bytes of a msgspec-encodable object (raises TypeError otherwise)."""
    return _ENCODER.encode(obj)


def digest(obj: Any) -> str:
    """sha256 hex of ``canonical(obj)``."""
    return hashlib.sha256(_ENCODER.encode(obj)).hexdigest()


class _Ambiguous(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _Ambiguous(f"gives the key {next(k for k in keys if keys.count(k) > 1)!r} twice (readers differ on which counts)")
    return dict(pairs)


def _constant(name: str) -> Any:
    raise _Ambiguous(f"holds {name}, which JSON has no form for")


def _within(a: Any, b: Any) -> bool:
    """``a`` is ``b`` less some fields of objects (recursively); numbers equal as numbers."""
    if isinstance(a, dict) and isinstance(b, dict):
        return all(k in b and _within(v, b[k]) for k, v in a.items())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_within(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or a is None:
        return type(a) is type(b) and a == b
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b


def noncanonical(payload: bytes, expected: bytes | None) -> str | None:
    """Why ``payload`` could be read otherwise than as the event ``expected`` (its canonical
    bytes; None: an older schema, only checked for keys given twice and NaN), or None where it
    cannot: the slow path, for payloads that differ from their canonical bytes."""
    try:
        got = json.loads(payload, object_pairs_hook=_pairs, parse_constant=_constant)
    except _Ambiguous as e:
        return str(e)
    except (ValueError, RecursionError) as e:
        return f"is not JSON another reader takes ({type(e).__name__})"
    try:
        if expected is None or _within(got, json.loads(expected)):
            return None
    except RecursionError:
        return "is nested too deeply to compare with its event's canonical bytes (more than about 500 levels)"
    return "differs from the canonical bytes of the event it decodes to (a value another reader would read otherwise)"
