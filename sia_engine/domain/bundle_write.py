"""Writing a bundle (the format: ``sia_engine.domain.bundle``): branches' events and the blobs they
name, streamed into one new file, each blob re-hashed as it is copied (never all in memory)."""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from sia_engine.domain.bundle import FORMAT, BlobRef, BranchRef, BundleInfo, Manifest, ordered
from sia_engine.domain.events import decode
from sia_engine.errors import BundleRefused, WriteRefused
from store import Store
from store.errors import BlobCorrupt

__all__ = ["write_bundle"]

_CHUNK = 1 << 20


def write_bundle(store: Store, branches: Sequence[str], out: str | os.PathLike[str], *, since: Mapping[str, int] | None = None) -> BundleInfo:
    """Write ``branches`` of ``store`` (their own events and every blob they name) to ``out``, a
    new file outside the store (``WriteRefused`` otherwise; nothing is overwritten). ``since``:
    for a branch named there, only its events after that seq (the receiver holds the rest), so
    a branch sent again as it grows costs what it grew, not all of it again."""
    target = Path(out)
    if not branches:
        raise BundleRefused("-", "name at least one branch to bundle")
    resolved, root = target.resolve(), store.root.resolve()
    if resolved == root or root in resolved.parents:
        raise WriteRefused(str(target), f"it is inside the store {root}; give a file outside it")
    if target.is_symlink() or target.exists():
        raise WriteRefused(str(target), "it exists (a bundle is never written over a file): give a new name")
    refs, members, blobs = [], [], dict[str, Path]()
    for i, info in enumerate(ordered(store, branches)):
        start = max(0, min((since or {}).get(info.name, -1) + 1, info.head_seq + 1))
        envs = store.log.read(info.name, after_seq=start - 1)
        after_id = store.log.at(info.name, start - 1).id if start > 0 else None
        rows = [(e.seq, e.id, e.kind, e.schema, msgspec.Raw(e.payload)) for e in envs]
        for e in envs:
            for blob in decode(e.kind, e.schema, e.payload, where=e.ref).blob_refs():
                blobs.setdefault(blob, store.blobs.path(blob))
        refs.append(BranchRef(info.name, info.base_branch, info.base_seq, info.base_id, info.head_seq, info.head_id, len(rows), start, after_id))
        members.append((f"events/{i}.json", msgspec.json.encode(rows)))
    fd, tmp = tempfile.mkstemp(prefix=".sia-bundle-", dir=target.parent if str(target.parent) else ".")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for name, content in members:
                z.writestr(name, content, compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
            sizes = {b: _copy_blob(z, b, path) for b, path in blobs.items()}
            manifest = Manifest(FORMAT, datetime.now(UTC).isoformat(), tuple(refs),
                                {b: BlobRef(size=n, suffix=blobs[b].name.partition(".")[2]) for b, n in sizes.items()})
            z.writestr("manifest.json", msgspec.json.encode(manifest))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _place(tmp, target)
    finally:
        os.unlink(tmp)
    return BundleInfo(str(target), tuple(r.name for r in refs), sum(r.events for r in refs), len(blobs), target.stat().st_size)


def _copy_blob(z: zipfile.ZipFile, blob: str, path: Path) -> int:
    """Stream the blob at ``path`` into the bundle, re-hashed on the way (a damaged store is
    reported as damaged: ``BlobCorrupt``, and no bundle is left); returns its size."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as src, z.open(f"blobs/{blob}", "w", force_zip64=True) as dst:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            dst.write(chunk)
            n += len(chunk)
    if h.hexdigest() != blob:
        raise BlobCorrupt(blob, h.hexdigest(), str(path))
    return n


def _place(tmp: str, target: Path) -> None:
    """The finished file at ``target``, never over a file (a name taken meanwhile is refused)."""
    try:
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links (FAT, some network mounts): an exclusive create
            with open(tmp, "rb") as src, open(target, "xb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
    except FileExistsError:
        raise WriteRefused(str(target), "it exists (a bundle is never written over a file): give a new name") from None
