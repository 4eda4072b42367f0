"""Canonical bytes and hashes: msgspec JSON with deterministic key order, hashed with sha256."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

__all__ = ["canonical", "digest"]

_ENCODER = msgspec.json.Encoder(order="deterministic")


def canonical(obj: Any) -> bytes:
    """Canonical JSON bytes of a msgspec-encodable object (raises TypeError otherwise)."""
    return _ENCODER.encode(obj)


def digest(obj: Any) -> str:
    """sha256 hex of ``canonical(obj)``."""
    return hashlib.sha256(_ENCODER.encode(obj)).hexdigest()
