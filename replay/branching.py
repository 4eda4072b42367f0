"""Fork and rollback as library calls: what ``sia fork`` and ``sia rollback`` do, for code that
embeds the engine. Both only append (a ref and a ``branch_forked`` event; a ``rolled_back``
event): nothing recorded is removed or changed.

The primitive under ``fork`` is ``sia_engine.domain.history`` (``History.fork`` forks an open history
from the state it holds; ``fork`` rebuilds the state at any seq first); the engine's loop uses it
too, so it lives below ``replay``.
"""

from __future__ import annotations

from replay.errors import RollbackRefused
from replay.rebuild import locate
from sia_engine.domain.events import RolledBack
from sia_engine.domain.history import History
from sia_engine.domain.history import fork as _fork
from store import Store

__all__ = ["fork_branch", "rollback", "RollbackRefused"]


def fork_branch(store: Store, new: str, *, source: str, at_seq: int, reason: str = "") -> History:
    """A new branch ``new`` growing from ``source#at_seq``; returns it opened for recording."""
    return _fork(store.log, new, source=source, at_seq=at_seq, reason=reason or f"forked from {source}@{at_seq}", blobs=store.blobs)


def rollback(store: Store, branch: str, version: str, *, reason: str) -> History:
    """Move ``branch``'s head back to ``version`` (an id or prefix of an earlier accepted version of
    its lineage) with a ``rolled_back`` event; returns the branch opened for recording.

    Refused (``RollbackRefused``, nothing written) for an event id, a version that is not
    accepted, the head itself, a version of another lineage, or a branch inside an iteration."""
    if not reason.strip():
        raise RollbackRefused(branch, version, "a rollback needs a reason: it is recorded for the audit")
    found = locate(store.log, version, branch=branch)
    if found.version is None:
        raise RollbackRefused(branch, version, "it names an event, not an agent version")
    hist = History.open(store.log, branch, blobs=store.blobs)
    head = hist.state.head
    v = found.version
    if v.status != "accepted" or v.version_id == head:
        accepted = ", ".join(x[:12] for x in dict.fromkeys(hist.state.head_history) if x != head) or "none"
        raise RollbackRefused(
            branch, version, f"version {v.version_id[:12]} is {'the head' if v.version_id == head else v.status}: "
            f"roll back to an earlier accepted version of the branch (its accepted versions: {accepted})"
        )
    if hist.state.phase != "idle":
        raise RollbackRefused(
            branch, version, f"the branch is inside iteration {hist.state.iteration} ({hist.state.phase}): finish it with sia run first"
        )
    hist.record(RolledBack(to_version=v.version_id, from_version=str(head), reason=reason))
    return hist
