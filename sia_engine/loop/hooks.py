"""``Hooks``: how the loop reports progress. The default does nothing; the CLI draws rich
progress bars; tests record calls. Hooks observe, they never steer the run."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sia_engine.domain.events import FeedbackVerdict
    from sia_engine.domain.state import AgentState, Version

__all__ = ["Hooks"]


class Hooks:
    def iteration(self, index: int, total: int) -> None:
        """Iteration ``index`` (0-based) of ``total`` begins."""

    def phase(self, name: str, total: int | None) -> None:
        """A step begins; ``total`` units of work (None: unknown)."""

    def advance(self, n: int = 1, *, loss: float | None = None) -> None:
        """``n`` units of the current step are done."""

    def note(self, message: str) -> None:
        """Something the user should know that changes nothing (an adapter served on another device)."""

    def verdict(self, verdict: FeedbackVerdict) -> None:
        """The Feedback Agent's verdict on the head is recorded (the one that stands: the last)."""

    def decided(self, candidate: Version, score: float, head_score: float | None, accepted: bool) -> None:
        """The gate decided on a candidate."""

    def finished(self, state: AgentState) -> None:
        """The run stopped (budget reached); ``state`` is the final state."""
