"""Durable files: the one way this project writes a file that must survive a crash whole.

``atomic_write`` writes a temp file in the target's folder, fsyncs it, renames it into place
(``os.replace``; or links it, never over an existing file, with ``exclusive``) and fsyncs the
folder, so that the name points at the whole new file or at the old one, never at a torn write; on
any error the temp file is removed and the target is left as it was. ``replace_folder`` does the
same for a folder written by another library (a converted model). Every writer of a durable file
goes through here (blobs, the log's heads file, snapshots, checkpoints and keys, exports, rebuilt
agents, the model cache), as dulwich's ``GitFile`` does for a git repository. A file written by
appending (the journal) fsyncs its own appends instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir", "replace_folder"]

_TMP_PREFIX = ".tmp-"
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a folder's entries (a file renamed or created in it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temp(folder: Path, suffix: str, mode: int) -> tuple[int, str]:
    """A new, empty temp file in ``folder`` (as ``tempfile.mkstemp`` makes one, but with ``mode``
    under the process's umask): its fd and path."""
    for _ in range(100):
        tmp = os.path.join(folder, f"{_TMP_PREFIX}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(tmp, _FLAGS, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name in {folder}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` durably and whole: a temp file in the same folder (created with
    ``mode`` under the umask), write, fsync, rename into place, folder fsync. On any error the temp
    file is removed and ``path`` is untouched. With ``exclusive`` an existing ``path`` is never
    replaced: the temp file is hard-linked to it, and ``FileExistsError`` says it was there."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(target.parent, target.suffix, mode)
    try:
        try:
            _write_all(fd, bytes(data))
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, target)  # fails if the target exists: an atomic create that never overwrites
            os.unlink(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def _fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then each folder (deepest first)."""
    for dirpath, _dirs, names in os.walk(folder, topdown=False):
        for name in names:
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(dirpath)


def replace_folder(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move the finished folder ``src`` to ``dst`` durably: every file and folder in it fsynced,
    an existing ``dst`` removed, ``src`` renamed to ``dst``, the parent folder fsynced. ``src``
    must be a sibling of ``dst`` (the same file system)."""
    source, target = Path(src), Path(dst)
    _fsync_tree(source)
    if target.exists():
        shutil.rmtree(target)
    os.replace(source, target)
    fsync_dir(target.parent)
