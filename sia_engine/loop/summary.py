"""What a run reached, said beside what it started from and the task's reference methods.

The head's validation score is compared with the initial version's (same episodes, same
protocol, same seeds) and with the task's reference baselines on the same split, so a gain is
never reported alone."""

from __future__ import annotations

from typing import Any

from sia_engine.domain.state import AgentState
from sia_engine.loop.task import Task

__all__ = ["run_summary", "summary_line"]


def run_summary(state: AgentState, task: Task) -> dict[str, Any]:
    versions = state.ordered_versions()
    initial = versions[0] if versions else None
    head = state.head_version
    init_score = initial.score("val") if initial else None
    head_score = head.score("val") if head else None
    baselines = dict(task.reference_baselines("val"))
    protocol = (state.run.config.get("eval") if state.run else None) or {}
    out: dict[str, Any] = {
        "initial_val_score": init_score,
        "head_val_score": head_score,
        "gain_over_initial": None if init_score is None or head_score is None else head_score - init_score,
        "eval_protocol": protocol,
        "reference_baselines_val": baselines,
        "levers_accepted": sorted({v.lever for v in versions if v.status == "accepted" and v.lever != "initial"}),
    }
    if baselines and head_score is not None:
        best = max(baselines, key=lambda k: baselines[k])
        out["best_baseline"] = {"name": best, "score": baselines[best], "head_beats_it": head_score > baselines[best]}
    return out


def summary_line(summary: dict[str, Any]) -> str:
    """One plain sentence for a terminal."""
    h, i = summary["head_val_score"], summary["initial_val_score"]
    if h is None or i is None:
        return "no validation score recorded yet"
    p = summary["eval_protocol"]
    t = p.get("temperature")
    at = "the scaffold's temperature; one sample at temperature 0" if t is None else f"temperature {t}"
    how = f" (eval: {p.get('mode')} of {p.get('samples')} samples per episode at {at})" if p.get("mode") in ("mean", "best") else " (eval: greedy)"
    text = f"head val {h:.3f} vs initial {i:.3f} ({h - i:+.3f}){how}"
    b = summary["reference_baselines_val"]
    if b:
        text += "; reference methods on the same split: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(b.items(), key=lambda kv: -kv[1]))
        best = summary["best_baseline"]
        text += f" -> the head {'beats' if best['head_beats_it'] else 'does not beat'} {best['name']}"
    return text
