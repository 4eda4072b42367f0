"""Replay, audit and rollback over a store: rebuild any agent version from the log.

``replay.rebuild`` rebuilds the state at any event of any branch and resolves what a user names
(an event id or prefix, ``branch#seq``, or a version id or prefix).
"""

from replay.rebuild import Located, locate, state_at

__all__ = ["Located", "locate", "state_at"]
