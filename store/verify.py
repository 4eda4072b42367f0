"""Integrity checks shared by every log backend: the reasons ``verify`` gives, and a reference
implementation over plain rows (the in-memory log uses it; DuckDB runs the same checks in SQL)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from store.envelope import BranchInfo, Envelope, Problem, event_id

__all__ = ["verify_rows", "reason_hash", "reason_seq", "reason_parent", "reason_head", "reason_unknown_branch", "reason_fork_point"]


def reason_hash(computed: str) -> str:
    return f"id does not match the event's content (the content hashes to {computed}): a stored byte was changed"


def reason_seq(expected: int, found: int) -> str:
    return f"expected seq {expected}, found seq {found}: an event is missing or the order was changed"


def reason_parent(parent: str | None, expected: str | None) -> str:
    return (
        f"parent is {parent or 'none'} but the previous event in the history is {expected or 'none'}: "
        f"the hash chain is broken here"
    )


def reason_head(head_seq: int, head_id: str | None, last_seq: int, last_id: str | None) -> str:
    return (
        f"the branch ref records head seq {head_seq} ({head_id or 'none'}) but the last stored event is "
        f"seq {last_seq} ({last_id or 'none'}): events were removed from or added to the branch outside the API"
    )


def reason_unknown_branch(branch: str) -> str:
    return f"event stored on branch {branch!r}, which has no ref: it was inserted outside the API"


def reason_fork_point(base_branch: str, base_seq: int, base_id: str) -> str:
    return f"fork point {base_branch}#{base_seq} ({base_id}) is not in the log"


def verify_rows(branches: Sequence[BranchInfo], rows: Mapping[str, Iterable[Envelope]]) -> list[Problem]:
    """Check hashes, seq order, parent links, heads and fork points; problems in branch order."""
    problems: list[Problem] = []
    stored: dict[str, list[Envelope]] = {b: sorted(r, key=lambda e: e.seq) for b, r in rows.items()}
    known = {b.name for b in branches}
    for info in branches:
        own = stored.get(info.name, [])
        prev_id: str | None = None
        if info.base_branch is not None:
            assert info.base_seq is not None and info.base_id is not None
            base = [e for e in stored.get(info.base_branch, []) if e.seq == info.base_seq]
            if not base or base[0].id != info.base_id:
                problems.append(Problem(info.name, None, None, reason_fork_point(info.base_branch, info.base_seq, info.base_id)))
            prev_id = info.base_id
        prev_seq = -1
        for e in own:
            computed = event_id(e.parent, e.branch, e.kind, e.schema, e.payload)
            if computed != e.id:
                problems.append(Problem(e.branch, e.seq, e.id, reason_hash(computed)))
            elif e.seq != prev_seq + 1:
                problems.append(Problem(e.branch, e.seq, e.id, reason_seq(prev_seq + 1, e.seq)))
            elif e.parent != prev_id:
                problems.append(Problem(e.branch, e.seq, e.id, reason_parent(e.parent, prev_id)))
            prev_id, prev_seq = e.id, e.seq
        last_seq = own[-1].seq if own else -1
        last_id = own[-1].id if own else info.base_id
        if last_seq != info.head_seq or last_id != info.head_id:
            problems.append(Problem(info.name, None, None, reason_head(info.head_seq, info.head_id, last_seq, last_id)))
    for b in sorted(set(stored) - known):
        for e in stored[b]:
            problems.append(Problem(b, e.seq, e.id, reason_unknown_branch(b)))
    return problems
