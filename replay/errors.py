"""Errors raised by ``replay`` (rebuild, replay, fork, rollback, diff).

Tree::

    SiaError
    └── ReplayError
        ├── RebuildMismatch      a rebuilt agent's part differs from what the log recorded
        ├── RollbackRefused      a rollback to a version that is not an earlier accepted one
        └── OutputRefused        an output folder that is not empty, not a folder, or inside the store
"""

from __future__ import annotations

from pathlib import Path

from sia_engine.errors import SiaError

__all__ = ["ReplayError", "RebuildMismatch", "RollbackRefused", "OutputRefused", "check_out_folder"]


class ReplayError(SiaError):
    """Root of the errors raised by ``replay``."""


class RebuildMismatch(ReplayError):
    """What a rebuild checked differs from the log: ``what`` (the part), the recorded value and the
    value found."""

    def __init__(self, what: str, expected: str, got: str, hint: str = "") -> None:
        self.what = what
        self.expected = expected
        self.got = got
        super().__init__(f"{what} differs from the log: recorded {expected}, found {got}" + (f"; {hint}" if hint else ""))


class RollbackRefused(ReplayError):
    """``branch`` cannot roll back to ``version``: ``reason`` says why and what to do."""

    def __init__(self, branch: str, version: str, reason: str) -> None:
        self.branch = branch
        self.version = version
        self.reason = reason
        super().__init__(f"cannot roll back {branch!r} to {version!r}: {reason}")


class OutputRefused(ReplayError):
    """``path`` cannot take a command's output: ``reason`` says why and what to do."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"will not write into {path}: {reason}")


def check_out_folder(out: str | Path, store_root: str | Path) -> Path:
    """``out`` as a folder a command may fill: absent or empty, a real folder (not a symlink), and
    not inside the store (whose folder holds only what the store writes). Nothing is overwritten."""
    folder = Path(out)
    if folder.is_symlink():
        raise OutputRefused(str(folder), "it is a symbolic link; give a new or empty folder")
    resolved, store = folder.resolve(), Path(store_root).resolve()
    if resolved == store or store in resolved.parents:
        raise OutputRefused(str(folder), f"it is inside the store {store}; give a folder outside it")
    if folder.exists() and not folder.is_dir():
        raise OutputRefused(str(folder), "it is a file, not a folder; give a new or empty folder")
    if folder.is_dir() and any(folder.iterdir()):
        raise OutputRefused(str(folder), "it is not empty (nothing is overwritten); give a new or empty folder, or empty this one")
    return folder
