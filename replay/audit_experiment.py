"""The audit report's experiment section: each arm's test scores per seed on both measures beside the baselines,
computed from the log alone (``sia_engine.experiment.table.result_from_records``)."""

from __future__ import annotations

import html
import statistics
from collections.abc import Callable, Mapping, Sequence

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


_W, _H, _PAD, _RIGHT, _GAP = 760, 300, 44, 220, 12


def _scale(arm_values: Sequence[float], lines: Sequence[tuple[str, float]]) -> tuple[float, float]:
    """The plotted range: every arm's score, and every line within one span of them; a line
    farther off (one reference method far below the rest) is clipped to the edge, its value
    written, rather than squashing every arm into a thin band."""
    core = list(arm_values) or [v for _, v in lines]
    lo, hi = min(core), max(core)
    span = (hi - lo) or 0.1
    near = [v for _, v in lines if lo - span <= v <= hi + span]
    lo, hi = min([lo, *near]), max([hi, *near])
    margin = ((hi - lo) or 0.1) * 0.08
    return lo - margin, hi + margin


def _spread(ys: list[float], top: float, bottom: float) -> list[float]:
    """Label positions at least ``_GAP`` apart, each as near its line as that allows, kept
    between ``top`` and ``bottom`` (the labels of lines that lie close do not overlap)."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    out = [0.0] * len(ys)
    last = top - _GAP
    for i in order:
        last = out[i] = max(ys[i], last + _GAP)
    overflow = last - bottom
    if overflow > 0:  # pushed past the bottom: shift the stack up
        for i in order:
            out[i] -= overflow
        for k in range(1, len(order)):
            out[order[k]] = max(out[order[k]], out[order[k - 1]] + _GAP)
    return out


def experiment_plot(result: ExperimentResult) -> str:
    """Each arm's test score on both measures (a filled dot per seed: its policy; a hollow
    square: its best artifact; a bar at each mean) and each baseline as a dashed line, labelled
    without overlap; a line far off the arms' scale is clipped to the edge with its value."""
    arms = list(dict.fromkeys(r.arm for r in result.arms))
    points = [(r.arm, r.seed, m, v) for r in result.arms for m in ("policy", "artifact") if (v := r.measure(m)) is not None]
    lines: list[tuple[str, float]] = [("base version", result.base_test)] if result.base_test is not None else []
    lines += [(b.method, b.mean) for b in result.baselines]
    if not points and not lines:
        return "<p>no arm scored on the test split yet</p>"
    lo, hi = _scale([v for *_, v in points], lines)
    top, bottom = _PAD, _H - _PAD
    slot = (_W - _PAD - _RIGHT) / max(1, len(arms))

    def y(v: float) -> float:
        return bottom - (min(max(v, lo), hi) - lo) / (hi - lo) * (bottom - top)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" role="img" class="plot experiment" '
             f'aria-label="experiment {html.escape(result.name)}: test score per arm, two measures">',
             f'<text x="{_PAD}" y="14" font-size="11">test score per seed: ● policy (the head\'s mean proposal), □ best artifact '
             f"(chosen on val); bars: means; dashed: baselines</text>",
             f'<text x="4" y="{y(hi) + 4:.1f}" font-size="10">{hi:.3f}</text><text x="4" y="{y(lo) + 4:.1f}" font-size="10">{lo:.3f}</text>',
             f'<line x1="{_PAD}" x2="{_W - _RIGHT}" y1="{bottom}" y2="{bottom}" stroke="#999"/>']
    label_ys = _spread([y(v) + 4 for _, v in lines], top, bottom + 4)
    for k, ((label, v), ly) in enumerate(zip(lines, label_ys, strict=True)):
        colour = _LINE_COLOURS[k % len(_LINE_COLOURS)]
        clipped = " (off the scale)" if not lo <= v <= hi else ""
        parts.append(f'<line x1="{_PAD}" x2="{_W - _RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="{colour}" stroke-dasharray="5,4">'
                     f"<title>{html.escape(label)}: {v:.4f}{clipped}</title></line>")
        parts.append(f'<text x="{_W - _RIGHT + 6}" y="{ly:.1f}" font-size="10" fill="{colour}" class="baseline-label">'
                     f"{html.escape(label)} {v:.3f}{clipped}</text>")
    for i, arm in enumerate(arms):
        parts += _arm_marks(arm, pad_x=_PAD + (i + 0.5) * slot, slot=slot, points=points, y=y)
        parts.append(f'<text x="{_PAD + (i + 0.5) * slot:.1f}" y="{_H - _PAD + 16}" font-size="11" text-anchor="middle">{html.escape(arm)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _arm_marks(arm: str, *, pad_x: float, slot: float, points: Sequence[tuple[str, int, str, float]], y: Callable[[float], float]) -> list[str]:
    """One arm's dots (policy, left) and squares (best artifact, right), each measure's mean a bar."""
    colour, parts = _ARM_COLOURS.get(arm, "#333"), []
    for m, cx in (("policy", pad_x - slot / 6), ("artifact", pad_x + slot / 6)):
        mine = [(seed, v) for a, seed, mm, v in points if a == arm and mm == m]
        for j, (seed, v) in enumerate(mine):
            dx = (j - (len(mine) - 1) / 2) * 7
            title = f"<title>{html.escape(arm)} seed {seed}: {v:.4f}{'' if m == 'policy' else ' (best artifact)'}</title>"
            if m == "policy":
                parts.append(f'<circle class="seed" cx="{cx + dx:.1f}" cy="{y(v):.1f}" r="4" fill="{colour}">{title}</circle>')
            else:
                parts.append(f'<rect class="artifact" x="{cx + dx - 3.5:.1f}" y="{y(v) - 3.5:.1f}" width="7" height="7" fill="white" '
                             f'stroke="{colour}" stroke-width="1.5">{title}</rect>')
        if mine:
            mean = statistics.fmean(v for _, v in mine)
            parts.append(f'<line x1="{cx - slot / 8:.1f}" x2="{cx + slot / 8:.1f}" y1="{y(mean):.1f}" y2="{y(mean):.1f}" stroke="{colour}" '
                         f'stroke-width="3" class="mean {m}"><title>{html.escape(arm)} {m} mean {mean:.4f}</title></line>')
    return parts


def _summary(result: ExperimentResult) -> str:
    rows = []
    for arm, m in arm_summary(result).items():
        for measure, against in (("policy", "base"), ("artifact", "searches")):
            x = m.get(measure)
            if x is None:
                continue
            if measure == "policy":
                vs = "-" if x["beats_base"] is None else ("beats the base version" if x["beats_base"] else "does NOT beat the base version")
            else:
                vs = ", ".join(("beats " if ok else "does NOT beat ") + method for method, ok in x["beats"].items()) or "-"
            rows.append(f"<tr><td>{html.escape(arm)}</td><td>{measure}</td><td>{x['mean']:.3f}</td><td>{x['sd']:.3f}</td><td>{x['seeds']}</td>"
                        f"<td>{html.escape(vs)}</td></tr>")
    table = ("<table><tr><th>arm</th><th>measure</th><th>mean test</th><th>sd</th><th>seeds</th><th>like with like</th></tr>"
             + "".join(rows) + "</table>")
    return table + "".join(f"<p>{html.escape(p.describe())}</p>" for p in comparisons(result).values() if p is not None)


def experiment_section(own: Mapping[str, Sequence[Recorded]]) -> list[str]:
    """HTML parts for every experiment among the branches' own records (none: no parts)."""
    parts: list[str] = []
    for name in experiment_names(own):
        result = result_from_records({b: rs for b, rs in own.items() if b.startswith(f"{name}-")}, name)
        parts += [f"<h3 class='experiment'>Experiment {html.escape(name)}</h3>", experiment_plot(result), _summary(result)]
    return ["<h2>Experiments</h2>", *parts] if parts else []
