"""What a run is pinned to: the task's data and the software it ran on (``run_started`` schema 2).

- **Data.** A task that reads files says which (``ReadsData.data_files``: a name as the user knows
  it, and a file or a folder); each file is hashed (a folder's regular files in the order of their
  relative names, through links to files and folders as the task reads them, each folder once
  however many links lead to it; devices and pipes never read, nor anything under /proc, /sys or
  /dev a link leads to). Data that cannot be read is
  ``DataUnreadable``, naming the path, before anything is recorded. Every
  task's episodes (all splits: inputs, gold answers, meta) and its split definition (the ids of
  each split, in order) are hashed too, so a task whose data lives in code is pinned as well.
- **Software.** Python, the platform, the model's device and the versions of the libraries the
  numbers depend on.

A resumed run compares the data with what it recorded and refuses other data (``DataChanged``,
naming the file); other software is said, not refused (bit-identity is promised only on the same
software, and a resume on another machine is legitimate).
"""

from __future__ import annotations

import hashlib
import os
import platform
import stat
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Protocol, runtime_checkable

import msgspec

from sia_engine.domain.canonical import canonical
from sia_engine.domain.payloads import DataFile, DataPin, Environment
from sia_engine.domain.state import RunInfo
from sia_engine.errors import DataChanged, DataUnreadable
from sia_engine.loop.task import Task
from sia_engine.models.protocol import Model, ServesOnDevice

__all__ = ["ReadsData", "PACKAGES", "data_pin", "environment", "data_difference", "environment_differences", "check_pins"]

# the libraries whose versions a run's numbers depend on
PACKAGES = ("torch", "transformers", "peft", "trl", "safetensors", "duckdb", "msgspec", "numpy")
_CHUNK = 1 << 20


@runtime_checkable
class ReadsData(Protocol):
    """A task that reads files: each one it reads (or a folder of them) under the name a user
    knows it by (a file's own name, a path relative to the data folder given)."""

    def data_files(self) -> dict[str, Path]: ...


_HASHES: dict[tuple[int, int, int, int, int], str] = {}  # (device, inode, size, mtime_ns, ctime_ns) -> sha256 (no user can set ctime)


def _file_sha256(path: Path, st: os.stat_result) -> str:
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except OSError as e:
            raise DataUnreadable(str(path), f"{type(e).__name__}: {e.strerror or e}") from None
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


_KERNEL = ("/proc", "/sys", "/dev")


def _kernel(path: Path) -> bool:
    """Whether a link leads into the kernel's trees (a data folder with a link to / must not hash
    /proc/kcore or block on /proc/kmsg): never task data."""
    real = os.path.realpath(path)
    return any(real == k or real.startswith(k + "/") for k in _KERNEL)


def _files(name: str, path: Path) -> list[DataFile]:
    """The regular files under ``path`` (itself, when a file), named ``name`` or ``name/<relative>``."""
    try:
        st = path.stat()
    except OSError:
        return [DataFile(name=name, sha256="", size=-1)]  # missing: pinned as missing, so a resume names it
    if stat.S_ISREG(st.st_mode):
        return [DataFile(name=name, sha256=_file_sha256(path, st), size=st.st_size)]
    if not stat.S_ISDIR(st.st_mode):
        return [DataFile(name=name, sha256="", size=-1)]  # a device or a pipe is never read
    out: list[DataFile] = []
    seen = {(st.st_dev, st.st_ino)}

    def unreadable(e: OSError) -> None:
        raise DataUnreadable(str(e.filename or path), f"{type(e).__name__}: {e.strerror or e}")

    for folder, dirs, names in os.walk(path, onerror=unreadable, followlinks=True):  # links followed as the task reads them
        keep = []
        for d in sorted(dirs):
            try:
                dst = (Path(folder) / d).stat()
            except OSError:
                continue  # a dangling link
            if (dst.st_dev, dst.st_ino) not in seen and not _kernel(Path(folder) / d):  # each folder once: a link back up is no loop
                seen.add((dst.st_dev, dst.st_ino))
                keep.append(d)
        dirs[:] = keep
        for n in sorted(names):
            p = Path(folder) / n
            try:
                fst = p.stat()
            except OSError:
                continue  # a dangling link: nothing a task could read
            if stat.S_ISREG(fst.st_mode) and not _kernel(p):
                out.append(DataFile(name=f"{name}/{p.relative_to(path).as_posix()}", sha256=_file_sha256(p, fst), size=fst.st_size))
    return sorted(out, key=lambda f: f.name)


def data_pin(task: Task) -> DataPin:
    """The task's data, hashed (see the module's docstring)."""
    files: list[DataFile] = []
    if isinstance(task, ReadsData):
        for name, path in sorted(task.data_files().items()):
            files += _files(name, Path(path))
    splits = {s: task.episodes(s) for s in ("train", "val", "test")}
    episodes = hashlib.sha256(canonical(msgspec.to_builtins(splits))).hexdigest()
    split = hashlib.sha256(canonical({s: [e.id for e in eps] for s, eps in splits.items()})).hexdigest()
    return DataPin(files=tuple(files), episodes=episodes, split=split)


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return ""


def environment(model: Model | None = None) -> Environment:
    """Python, platform, the model's device ("" when it has none here) and library versions."""
    device = model.device if model is not None and isinstance(model, ServesOnDevice) else ""
    return Environment(python=platform.python_version(), platform=f"{platform.system()}-{platform.machine()}", device=device,
                       packages={p: _version(p) for p in PACKAGES})


def data_difference(recorded: DataPin, now: DataPin) -> tuple[str, str, str] | None:
    """The first difference as (what, recorded, found), or None when the data is the same."""
    have = {f.name: f for f in now.files}
    for f in recorded.files:
        g = have.pop(f.name, None)
        if g is None:
            return f"data file {f.name}", f"sha256 {f.sha256}", "no such file"
        if (g.sha256, g.size) != (f.sha256, f.size):
            return (f"data file {f.name}", f"sha256 {f.sha256 or '-'} ({f.size} bytes)", f"sha256 {g.sha256 or '-'} ({g.size} bytes)")
    if have:
        name = sorted(have)[0]
        return f"data file {name}", "no such file", f"sha256 {have[name].sha256}"
    if recorded.split != now.split:
        return "the task's split definition (episode ids per split)", f"sha256 {recorded.split}", f"sha256 {now.split}"
    if recorded.episodes != now.episodes:
        return "the task's episodes (inputs, gold answers)", f"sha256 {recorded.episodes}", f"sha256 {now.episodes}"
    return None


def environment_differences(recorded: Environment, now: Environment) -> list[str]:
    """Each way the software here differs from the recorded, in words ("" fields are skipped)."""
    out = []
    for what, a, b in (("Python", recorded.python, now.python), ("platform", recorded.platform, now.platform),
                       ("device", recorded.device, now.device)):
        if a and b and a != b:
            out.append(f"{what} {a} recorded, {b} here")
    for name in sorted(set(recorded.packages) | set(now.packages)):
        a, b = recorded.packages.get(name, ""), now.packages.get(name, "")
        if a != b:
            out.append(f"{name} {a or 'not installed'} recorded, {b or 'not installed'} here")
    return out


def check_pins(run: RunInfo, task: Task, model: Model, note: Callable[[str], None]) -> None:
    """A run resumed here, against what it recorded: other data is refused (``DataChanged``),
    other software is said (``note``)."""
    if run.data is None:
        note("this run was recorded before its data was pinned (run_started schema 1): the task's data is not checked")
    elif (diff := data_difference(run.data, data_pin(task))) is not None:
        raise DataChanged(*diff)
    if run.environment is not None and (diffs := environment_differences(run.environment, environment(model))):
        note("software differs from the recording (outputs may differ where they are generated again): " + "; ".join(diffs))
