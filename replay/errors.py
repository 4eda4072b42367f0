"""Errors raised by ``replay`` (rebuild, replay, fork, rollback, diff).

Tree::

    SiaError
    └── ReplayError
        ├── RebuildMismatch      a rebuilt agent's part differs from what the log recorded
        └── RollbackRefused      a rollback to a version that is not an earlier accepted one
"""

from __future__ import annotations

from sia_engine.errors import SiaError

__all__ = ["ReplayError", "RebuildMismatch", "RollbackRefused"]


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
