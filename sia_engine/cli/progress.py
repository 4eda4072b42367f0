"""What the commands show while the loop works: progress bars and a line per decision."""

from __future__ import annotations

from typing import Any

from rich.progress import Progress

from sia_engine.cli.api import styled
from sia_engine.loop.hooks import Hooks

__all__ = ["RichHooks", "describe_verdict"]


class RichHooks(Hooks):
    """Progress bars for `sia run`: one bar per step, a line per decision."""

    def __init__(self, progress: Progress) -> None:
        self.p = progress
        self.task: Any = None
        self.name = ""

    def iteration(self, index: int, total: int) -> None:
        self.p.console.print(styled((f"iteration {index + 1}/{total}", "bold")))

    def phase(self, name: str, total: int | None) -> None:
        if self.task is not None:
            self.p.remove_task(self.task)
        self.task = self.p.add_task(name, total=total)
        self.name = name

    def advance(self, n: int = 1, *, loss: float | None = None) -> None:
        if self.task is not None:
            self.p.update(self.task, advance=n, description=f"{self.name} (loss {loss:.3f})" if loss is not None else None)

    def note(self, message: str) -> None:
        self.p.console.print(styled(("note", "yellow"), f": {message}"))

    def verdict(self, verdict: Any) -> None:
        self.p.console.print(f"  feedback ({verdict.policy}): {describe_verdict(verdict)}", highlight=False, markup=False)

    def decided(self, candidate: Any, score: float, head_score: float | None, accepted: bool) -> None:
        verdict = ("accepted", "green") if accepted else ("rejected", "yellow")
        hs = "-" if head_score is None else f"{head_score:.3f}"
        self.p.console.print(styled(f"  {candidate.lever} candidate {candidate.version_id[:12]}: val {score:.3f} vs head {hs} -> ", verdict))

    def finished(self, state: Any) -> None:
        if self.task is not None:
            self.p.remove_task(self.task)
            self.task = None


def describe_verdict(v: Any) -> str:
    """One line for a Feedback Agent's verdict: what it asks for, and, for a model's choice, the
    options it chose and what the rule policy would have chosen on the same iteration."""
    if not v.valid:
        return f"invalid, not acted on ({(v.raw or '')[:80]!r})"
    if v.lever == "weights" and v.training_plan is not None:
        n = len(v.training_plan.trajectory_ids)
        what = f"train the weights ({v.training_plan.effective_recipe}, {n} trajector{'y' if n == 1 else 'ies'})"
    elif v.lever == "scaffold":
        what = "patch the scaffold (" + ", ".join(f"{op.op} {op.path}" for op in v.patch) + ")"
    else:
        what = "no change this iteration"
    if v.choice:
        chosen = "; ".join(f"{st.stage}: {st.chosen_label!r}" + (" (tie rule)" if len(st.tied) > 1 else "") for st in v.choice.stages)
        rule = f"; the rule policy: {v.choice.rule_verdict}" if v.choice.rule_verdict else ""  # a bandit records none
        what += f" [{chosen}{rule}]"
    return what
