"""Verification of a DuckDB log in SQL: DuckDB recomputes every id with its own ``sha256`` and
checks seq order and parent links with window functions, then heads and fork points."""

from __future__ import annotations

import duckdb

from store.envelope import Problem, VerifyReport
from store.verify import reason_fork_point, reason_hash, reason_head, reason_parent, reason_seq, reason_unknown_branch

__all__ = ["verify_connection"]

# Every row's recomputed id, its predecessor on the branch and the branch ref, in one pass.
_VERIFY_SQL = """
WITH e AS (
    SELECT branch, seq, id, parent,
        sha256(coalesce(parent, '') || chr(10) || branch || chr(10) || kind || chr(10)
               || CAST(schema AS VARCHAR) || chr(10) || CAST(payload AS VARCHAR)) AS computed,
        lag(id) OVER w AS prev_id,
        lag(seq) OVER w AS prev_seq
    FROM events WINDOW w AS (PARTITION BY branch ORDER BY seq)
)
SELECT e.branch, e.seq, e.id, e.parent, e.computed,
    coalesce(e.prev_seq, -1) + 1 AS expected_seq,
    CASE WHEN e.prev_seq IS NULL THEN b.base_id ELSE e.prev_id END AS expected_parent,
    b.name IS NULL AS unknown_branch, coalesce(b.ord, 9223372036854775807) AS ord
FROM e LEFT JOIN branches b ON b.name = e.branch
WHERE b.name IS NULL OR e.computed != e.id OR e.seq != coalesce(e.prev_seq, -1) + 1
   OR e.parent IS DISTINCT FROM (CASE WHEN e.prev_seq IS NULL THEN b.base_id ELSE e.prev_id END)
ORDER BY ord, e.branch, e.seq
LIMIT 10000
"""

_HEADS_SQL = """
WITH last AS (
    SELECT branch, max(seq) AS seq FROM events GROUP BY branch
)
SELECT b.name, b.ord, b.head_seq, b.head_id, coalesce(l.seq, -1) AS last_seq,
    CASE WHEN l.seq IS NULL THEN b.base_id ELSE ev.id END AS last_id
FROM branches b LEFT JOIN last l ON l.branch = b.name
LEFT JOIN events ev ON ev.branch = l.branch AND ev.seq = l.seq
WHERE b.head_seq != coalesce(l.seq, -1)
   OR b.head_id IS DISTINCT FROM (CASE WHEN l.seq IS NULL THEN b.base_id ELSE ev.id END)
"""

_FORKS_SQL = """
SELECT b.name, b.ord, b.base_branch, b.base_seq, b.base_id FROM branches b
LEFT JOIN events ev ON ev.branch = b.base_branch AND ev.seq = b.base_seq
WHERE b.base_branch IS NOT NULL AND ev.id IS DISTINCT FROM b.base_id
"""


def verify_connection(con: duckdb.DuckDBPyConnection) -> VerifyReport:
    """Every check of ``store.verify.verify_rows``, run in SQL over the open database."""
    found: list[tuple[int, str, int, Problem]] = []
    for branch, seq, eid, parent, computed, exp_seq, exp_parent, unknown, ord_ in con.execute(
        _VERIFY_SQL
    ).fetchall():
        if unknown:
            reason = reason_unknown_branch(branch)
        elif computed != eid:
            reason = reason_hash(computed)
        elif seq != exp_seq:
            reason = reason_seq(exp_seq, seq)
        else:
            reason = reason_parent(parent, exp_parent)
        found.append((ord_, branch, seq, Problem(branch, seq, eid, reason)))
    for name, ord_, head_seq, head_id, last_seq, last_id in con.execute(_HEADS_SQL).fetchall():
        p = Problem(name, None, None, reason_head(head_seq, head_id, last_seq, last_id))
        found.append((ord_, name, 2**62, p))
    for name, ord_, base_branch, base_seq, base_id in con.execute(_FORKS_SQL).fetchall():
        found.append((ord_, name, -1, Problem(name, None, None, reason_fork_point(base_branch, base_seq, base_id))))
    found.sort(key=lambda t: (t[0], t[1], t[2]))
    [(n_events, n_branches)] = con.execute(
        "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM branches)"
    ).fetchall()
    return VerifyReport(int(n_events), int(n_branches), tuple(p for *_, p in found))
