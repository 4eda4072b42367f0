"""``BlobStore``: content-addressed files under ``blobs/<sha[:2]>/<sha>.<suffix>``.

A blob's name is the sha256 of its bytes. Writes go through ``store.files.atomic_write`` (a temp
file in the same folder, fsynced, renamed into place, then the folder fsynced), so a blob is
durable before any event that references it is committed; putting a blob that exists is a no-op.
Reads re-hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import safetensors.numpy

from store.errors import BlobCorrupt, BlobNotFound, InvalidBlobId, InvalidName
from store.files import atomic_write

__all__ = ["SUFFIXES", "BlobStore", "canonical_safetensors", "safetensors_metadata"]

_ID_RE = re.compile(r"[0-9a-f]{64}")
SUFFIXES = ("safetensors", "json", "bin")


def _check_id(blob_id: object) -> str:
    if not isinstance(blob_id, str) or not _ID_RE.fullmatch(blob_id):
        raise InvalidBlobId(blob_id)
    return blob_id


def canonical_safetensors(data: bytes, *, metadata: Mapping[str, str] | None = None) -> bytes:
    """The same safetensors file with its JSON header keys sorted (``metadata`` merged in).

    safetensors writes its header from a hash map, so the same tensors and metadata can give
    different bytes from run to run; content addressing needs one byte string per content.
    The data section and its offsets are unchanged."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    if metadata:
        header["__metadata__"] = {**header.get("__metadata__", {}), **metadata}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keep the data section 8-byte aligned, as safetensors does
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The string metadata in a safetensors file's header."""
    (n,) = struct.unpack("<Q", data[:8])
    return dict(json.loads(data[8 : 8 + n]).get("__metadata__", {}))


class BlobStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _candidates(self, blob_id: str) -> Iterator[Path]:
        folder = self.root / blob_id[:2]
        for suffix in SUFFIXES:
            yield folder / f"{blob_id}.{suffix}"

    def path(self, blob_id: str) -> Path:
        """Where the blob lies; raises ``BlobNotFound``."""
        _check_id(blob_id)
        for p in self._candidates(blob_id):
            if p.exists():
                return p
        raise BlobNotFound(blob_id, str(self.root / blob_id[:2]))

    def exists(self, blob_id: str) -> bool:
        _check_id(blob_id)
        return any(p.exists() for p in self._candidates(blob_id))

    def put(self, data: bytes, *, suffix: str = "bin") -> str:
        """Store ``data``; returns its sha256. Durable on return."""
        if suffix not in SUFFIXES:
            raise InvalidName("blob suffix", suffix, f"use one of {', '.join(SUFFIXES)}")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"blob data must be bytes, got {type(data).__name__}")
        blob_id = hashlib.sha256(data).hexdigest()
        if self.exists(blob_id):
            return blob_id
        atomic_write(self.root / blob_id[:2] / f"{blob_id}.{suffix}", bytes(data))
        return blob_id

    def get(self, blob_id: str) -> bytes:
        """The blob's bytes, re-hashed; raises ``BlobNotFound`` or ``BlobCorrupt``."""
        p = self.path(blob_id)
        data = p.read_bytes()
        got = hashlib.sha256(data).hexdigest()
        if got != blob_id:
            raise BlobCorrupt(blob_id, got, str(p))
        return data

    def put_tensors(self, tensors: Mapping[str, np.ndarray], *, metadata: Mapping[str, str] | None = None) -> str:
        """Store named arrays as a safetensors file; returns its sha256."""
        data = safetensors.numpy.save(dict(tensors), metadata=dict(metadata) if metadata else None)
        return self.put_safetensors(data)

    def put_safetensors(self, data: bytes, *, metadata: Mapping[str, str] | None = None) -> str:
        """Store safetensors bytes (from any framework) in canonical form, with ``metadata``
        added to its header; returns the sha256."""
        return self.put(canonical_safetensors(data, metadata=metadata), suffix="safetensors")

    def get_tensors(self, blob_id: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """The arrays and string metadata of a safetensors blob (re-hashed on read)."""
        data = self.get(blob_id)
        return safetensors.numpy.load(data), safetensors_metadata(data)

    def ids(self) -> list[str]:
        """Every stored blob id, sorted."""
        out: list[str] = []
        if not self.root.exists():
            return out
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir() and len(folder.name) == 2:
                for p in folder.iterdir():
                    stem, _, suffix = p.name.partition(".")
                    if suffix in SUFFIXES and _ID_RE.fullmatch(stem) and stem[:2] == folder.name:
                        out.append(stem)
        return sorted(out)

    def verify(self) -> list[tuple[str, str]]:
        """Re-hash every blob; returns (blob id, problem) for each one that fails."""
        bad: list[tuple[str, str]] = []
        for blob_id in self.ids():
            try:
                self.get(blob_id)
            except BlobCorrupt as e:
                bad.append((blob_id, str(e)))
        return bad
