"""The audit report's experiment section: each arm's test scores per seed beside the baselines,
computed from the log alone (``sia_engine.experiment.table.result_from_records``)."""

from __future__ import annotations

import html
import statistics
from collections.abc import Mapping, Sequence

from sia_engine.domain.projection import Recorded
from sia_engine.experiment.table import (
    ExperimentResult,
    arm_summary,
    comparisons,
    experiment_names,
    result_from_records,
)

__all__ = ["experiment_section", "experiment_plot"]

_ARM_COLOURS = {"scaffold": "#1f77b4", "weights": "#d62728", "both": "#2ca02c"}
_LINE_COLOURS = ("#555", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#bcbd22")


def experiment_plot(result: ExperimentResult) -> str:
    """Test score per arm (a dot per seed, a bar at the mean) and each baseline as a dashed line."""
    arms = list(dict.fromkeys(r.arm for r in result.arms))
    scored = [(r.arm, r.seed, r.test_score) for r in result.arms if r.test_score is not None]
    lines: list[tuple[str, float]] = [("base version", result.base_test)] if result.base_test is not None else []
    lines += [(b.method, b.mean) for b in result.baselines]
    values = [s for _, _, s in scored] + [v for _, v in lines]
    if not values:
        return "<p>no arm scored on the test split yet</p>"
    lo, hi = min(values + [0.0]), max(values)
    span = (hi - lo) or 1.0
    w, h, pad, right = 760, 280, 44, 190
    slot = (w - pad - right) / max(1, len(arms))

    def y(v: float) -> float:
        return h - pad - (v - lo) / span * (h - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" class="plot experiment" '
             f'aria-label="experiment {html.escape(result.name)}: test score per arm">',
             f'<text x="{pad}" y="14" font-size="11">test score: a dot per seed, a bar at the mean; dashed: baselines</text>',
             f'<text x="4" y="{y(hi) + 4:.1f}" font-size="10">{hi:.3f}</text><text x="4" y="{y(lo) + 4:.1f}" font-size="10">{lo:.3f}</text>',
             f'<line x1="{pad}" x2="{w - right}" y1="{h - pad}" y2="{h - pad}" stroke="#999"/>']
    for k, (label, v) in enumerate(lines):
        colour = _LINE_COLOURS[k % len(_LINE_COLOURS)]
        parts.append(f'<line x1="{pad}" x2="{w - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="{colour}" stroke-dasharray="5,4">'
                     f"<title>{html.escape(label)}: {v:.4f}</title></line>")
        parts.append(f'<text x="{w - right + 6}" y="{y(v) + 4:.1f}" font-size="10" fill="{colour}" class="baseline-label">'
                     f"{html.escape(label)} {v:.3f}</text>")
    for i, arm in enumerate(arms):
        cx = pad + (i + 0.5) * slot
        colour = _ARM_COLOURS.get(arm, "#333")
        mine = [(seed, s) for a, seed, s in scored if a == arm]
        for j, (seed, s) in enumerate(mine):
            dx = (j - (len(mine) - 1) / 2) * 9
            parts.append(f'<circle class="seed" cx="{cx + dx:.1f}" cy="{y(s):.1f}" r="4" fill="{colour}">'
                         f"<title>{html.escape(arm)} seed {seed}: {s:.4f}</title></circle>")
        if mine:
            m = statistics.fmean(s for _, s in mine)
            parts.append(f'<line x1="{cx - slot / 4:.1f}" x2="{cx + slot / 4:.1f}" y1="{y(m):.1f}" y2="{y(m):.1f}" stroke="{colour}" '
                         f'stroke-width="3" class="mean"><title>{html.escape(arm)} mean {m:.4f}</title></line>')
        parts.append(f'<text x="{cx:.1f}" y="{h - pad + 16}" font-size="11" text-anchor="middle">{html.escape(arm)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _summary(result: ExperimentResult) -> str:
    rows = []
    for arm, m in arm_summary(result).items():
        beats = ", ".join(("beats " if ok else "does NOT beat ") + method for method, ok in m["beats"].items()) or "-"
        rows.append(f"<tr><td>{html.escape(arm)}</td><td>{m['mean']:.3f}</td><td>{m['sd']:.3f}</td><td>{m['seeds']}</td><td>{html.escape(beats)}</td></tr>")
    table = ("<table><tr><th>arm</th><th>mean test</th><th>sd</th><th>seeds</th><th>vs searches</th></tr>" + "".join(rows) + "</table>")
    return table + "".join(f"<p>{html.escape(p.describe())}</p>" for p in comparisons(result).values() if p is not None)


def experiment_section(own: Mapping[str, Sequence[Recorded]]) -> list[str]:
    """HTML parts for every experiment among the branches' own records (none: no parts)."""
    parts: list[str] = []
    for name in experiment_names(own):
        result = result_from_records({b: rs for b, rs in own.items() if b.startswith(f"{name}-")}, name)
        parts += [f"<h3 class='experiment'>Experiment {html.escape(name)}</h3>", experiment_plot(result), _summary(result)]
    return ["<h2>Experiments</h2>", *parts] if parts else []
