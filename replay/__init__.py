"""Replay, audit and rollback over a store: rebuild any agent version from the log.

``replay.rebuild`` rebuilds the state at any event of any branch and resolves what a user names
(an event id or prefix, ``branch#seq``, or a version id or prefix); ``replay.audit`` writes a
self-contained HTML report (lineage, scores per version and lever, the integrity check).
"""

from replay.audit import audit_report
from replay.rebuild import Located, locate, state_at

__all__ = ["Located", "audit_report", "locate", "state_at"]
