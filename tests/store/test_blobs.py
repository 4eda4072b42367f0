"""Content-addressed blob store."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from store import BlobCorrupt, BlobNotFound, BlobStore, InvalidBlobId, InvalidName


def test_put_get_layout(tmp_path: Path) -> None:
    bs = BlobStore(tmp_path)
    data = b"hello blobs"
    bid = bs.put(data)
    assert bid == hashlib.sha256(data).hexdigest()
    assert bs.path(bid) == tmp_path / bid[:2] / f"{bid}.bin"
    assert bs.get(bid) == data
    assert bs.exists(bid) and bs.ids() == [bid]
    assert [p.name for p in (tmp_path / bid[:2]).iterdir()] == [f"{bid}.bin"]  # no temp file left


def test_put_existing_is_a_noop(tmp_path: Path) -> None:
    bs = BlobStore(tmp_path)
    bid = bs.put(b"x")
    p = bs.path(bid)
    before = p.stat().st_mtime_ns
    os.utime(p, ns=(before - 10**9, before - 10**9))
    assert bs.put(b"x") == bid
    assert p.stat().st_mtime_ns == before - 10**9


def test_tensors_are_safetensors(tmp_path: Path) -> None:
    bs = BlobStore(tmp_path)
    t = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.int64)}
    bid = bs.put_tensors(t, metadata={"format": "pt", "note": "x"})
    assert bs.path(bid).suffix == ".safetensors"
    got, meta = bs.get_tensors(bid)
    assert meta == {"format": "pt", "note": "x"}
    np.testing.assert_array_equal(got["a"], t["a"])
    # readable by safetensors itself, from the file
    again = safetensors.numpy.load_file(str(bs.path(bid)))
    np.testing.assert_array_equal(again["b"], t["b"])
    assert bs.put_tensors(t, metadata={"format": "pt", "note": "x"}) == bid  # deterministic bytes


def test_corrupt_blob_detected(tmp_path: Path) -> None:
    bs = BlobStore(tmp_path)
    bid = bs.put(b"precious weights")
    p = bs.path(bid)
    p.write_bytes(b"precious weightz")
    got = hashlib.sha256(b"precious weightz").hexdigest()
    with pytest.raises(BlobCorrupt) as exc:
        bs.get(bid)
    assert str(exc.value) == (
        f"blob {p} is corrupt: its bytes hash to {got}, expected {bid}; restore it from a backup "
        "(the log still names the right hash)"
    )
    assert bs.verify() == [(bid, str(exc.value))]


def test_ids_are_validated_before_paths(tmp_path: Path) -> None:
    bs = BlobStore(tmp_path)
    for bad in ["../../etc/passwd", "A" * 64, "a" * 63, "", None, "a" * 64 + "/"]:
        with pytest.raises(InvalidBlobId):
            bs.get(bad)  # type: ignore[arg-type]
    with pytest.raises(BlobNotFound, match=f"blob {'a' * 64} is not in the store"):
        bs.get("a" * 64)
    with pytest.raises(InvalidName):
        bs.put(b"x", suffix="exe")


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bs = BlobStore(tmp_path)

    def boom(*a: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        bs.put(b"data")
    monkeypatch.undo()
    assert bs.ids() == []
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_safetensors_bytes_are_canonical(tmp_path: Path) -> None:
    """safetensors orders its header from a hash map; the store sorts it so that equal content
    always has one id, and the file still loads."""
    bs = BlobStore(tmp_path)
    t = {f"t{i}": np.full((2,), i, np.float32) for i in range(6)}
    meta = {f"k{i}": str(i) for i in range(8)}
    ids = {bs.put_tensors(t, metadata=meta) for _ in range(10)}
    assert len(ids) == 1
    [bid] = ids
    raw = safetensors.numpy.save(t, metadata=meta)
    from store.blobs import canonical_safetensors

    assert canonical_safetensors(raw) == bs.get(bid)
    assert canonical_safetensors(bs.get(bid)) == bs.get(bid)
    got, m = bs.get_tensors(bid)
    assert m == meta and all(np.array_equal(got[k], v) for k, v in t.items())
