"""Pieces of the audit report: the score-per-iteration plot, and each version's provenance (the
verdict that made it, with its evidence; the patch as a text diff; the adapter's provenance with
its loss curve). Plain HTML and inline SVG: the report needs no script and no external asset."""

from __future__ import annotations

import difflib
import html
from typing import Any

import msgspec

from sia_engine.domain.events import (
    AdapterCheckpointed,
    Event,
    FeedbackVerdict,
    IterationStarted,
    RolledBack,
    ScaffoldPatched,
    TrajectoryRecorded,
)
from sia_engine.domain.projection import Projection, Recorded
from sia_engine.domain.state import AgentState, Version

__all__ = ["Provenance", "Provenances", "ProvenanceProjection", "iteration_plot", "version_details"]

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


class Provenance(msgspec.Struct):
    """What made a version: its event, the verdict before it, and that verdict's evidence."""

    event: Event
    where: str
    verdict: FeedbackVerdict | None = None
    evidence: list[TrajectoryRecorded] = []


class Provenances(msgspec.Struct):
    """The provenance of each version made on a branch, and its rollbacks as text."""

    versions: dict[str, Provenance] = {}
    rollbacks: list[str] = []
    verdict: FeedbackVerdict | None = None  # the iteration's valid verdict so far
    trajectories: dict[str, TrajectoryRecorded] = {}  # the iteration's training trajectories so far


class ProvenanceProjection(Projection[Provenances]):
    """Per version: the event that made it, the verdict before it and that verdict's evidence."""

    kinds = frozenset({"iteration_started", "trajectory_recorded", "feedback_verdict", "scaffold_patched", "adapter_checkpointed",
                       "rolled_back"})

    def initial(self) -> Provenances:
        return Provenances(versions={}, rollbacks=[], trajectories={})

    def apply(self, p: Provenances, r: Recorded) -> Provenances:
        e = r.event
        if isinstance(e, IterationStarted):
            p.trajectories, p.verdict = {}, None
        elif isinstance(e, TrajectoryRecorded) and e.split == "train":
            p.trajectories[e.trajectory_id] = e
        elif isinstance(e, FeedbackVerdict) and e.valid:
            p.verdict = e
        elif isinstance(e, (ScaffoldPatched, AdapterCheckpointed)):
            v = p.verdict
            ids = v.evidence if v else ()
            if v is not None and v.training_plan is not None:
                ids = tuple(v.training_plan.trajectory_ids)
            p.versions[e.version_id] = Provenance(e, r.where, v, [p.trajectories[i] for i in ids if i in p.trajectories])
        elif isinstance(e, RolledBack):
            p.rollbacks.append(f"{r.where}: head {e.from_version[:12]} -> {e.to_version[:12]} ({e.reason})")
        return p


def iteration_plot(rows: list[dict[str, Any]]) -> str:
    """Head score after each iteration, one line per branch; dots for candidates (hollow: rejected).
    ``rows`` are ``replay.diff.compare_branches`` rows."""
    series: dict[str, list[tuple[int, float | None, float | None, str]]] = {}
    for r in rows:
        series.setdefault(r["branch"], []).append((r["iteration"], r["candidate_score"], r["head_score"], r["lever"]))
    points = [(i, s) for rs in series.values() for (i, c, h, _) in rs for s in (c, h) if s is not None]
    if not points:
        return "<p>no iterations recorded</p>"
    n = max(i for i, _ in points) + 1
    lo, hi = min(s for _, s in points), max(s for _, s in points)
    span = (hi - lo) or 1.0
    w, h, pad = 760, 260, 40

    def xy(i: int, s: float) -> tuple[float, float]:
        return pad + i * (w - 2 * pad) / max(1, n - 1), h - pad - (s - lo) / span * (h - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="score per iteration" class="plot">',
             f'<text x="{pad}" y="14" font-size="11">val score (head after each iteration: lines; candidates: dots, hollow = rejected)</text>',
             f'<text x="{w - pad}" y="{h - 8}" font-size="11" text-anchor="end">iteration (0..{n - 1})</text>',
             f'<text x="4" y="{pad}" font-size="10">{hi:.3f}</text><text x="4" y="{h - pad}" font-size="10">{lo:.3f}</text>']
    legend = []
    for k, (branch, branch_rows) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        line = [xy(i, hs) for (i, _, hs, _) in branch_rows if hs is not None]
        if line:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                         + " ".join(f"{x:.1f},{y:.1f}" for x, y in line) + '"/>')
        for i, c, hs, lever in branch_rows:
            if c is None:
                continue
            x, y = xy(i, c)
            fill = colour if hs is not None and abs(hs - c) < 1e-12 else "#fff"
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{fill}" stroke="{colour}">'
                         f"<title>{html.escape(branch)} iteration {i}: {lever} candidate {c:.4f}</title></circle>")
        legend.append(f'<span style="color:{colour}">&#9632; {html.escape(branch)}</span>')
    parts.append("</svg>")
    return "".join(parts) + '<p class="legend">' + " ".join(legend) + "</p>"


def _sparkline(curve: tuple[dict[str, float], ...], key: str) -> str:
    vals = [c[key] for c in curve if key in c]
    if len(vals) < 2:
        return ""
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    pts = " ".join(f"{4 + i * 192 / (len(vals) - 1):.1f},{36 - (v - lo) / span * 32:.1f}" for i, v in enumerate(vals))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="200" height="40" class="curve"><polyline fill="none" stroke="#d62728" '
            f'points="{pts}"/></svg> <span class="small">{key} {vals[0]:.4g} &rarr; {vals[-1]:.4g} over {len(vals)} steps</span>')


def _scaffold_lines(v: Version) -> list[str]:
    return msgspec.json.format(msgspec.json.encode(v.scaffold), indent=2).decode().splitlines(keepends=True)


def version_details(state: AgentState, v: Version, p: Provenance | None, *, max_evidence: int = 8) -> str:
    """One version, collapsed: what made it and why."""
    s = v.score("val")
    head = " &middot; head" if v.version_id == state.head else ""
    summary = (f"<summary><b>{v.index}</b> <code>{v.version_id[:12]}</code> {v.lever} &middot; {v.status}{head} &middot; "
               f"val {'-' if s is None else f'{s:.4f}'}</summary>")
    body = [f"<p>parent <code>{(v.parent or '-')[:12]}</code>; adapter <code>{v.adapter or '-'}</code></p>"]
    if p is not None:
        body.append(f"<p>recorded at {html.escape(p.where)}</p>")
        if p.verdict is not None:
            body.append(f"<p class='verdict'><b>verdict</b> ({html.escape(p.verdict.policy)}): {html.escape(p.verdict.rationale)}</p>")
        if p.evidence:
            rows = "".join(f"<tr><td><code>{html.escape(t.trajectory_id)}</code></td><td>{'-' if t.score is None else f'{t.score:.4f}'}</td>"
                           f"<td>{html.escape(t.failure or '')}</td><td><code>{html.escape(t.output[:160])}</code></td></tr>"
                           for t in p.evidence[:max_evidence])
            more = f"<p class='small'>and {len(p.evidence) - max_evidence} more</p>" if len(p.evidence) > max_evidence else ""
            body.append("<table class='evidence'><tr><th>trajectory</th><th>score</th><th>failure</th><th>output</th></tr>" + rows + "</table>" + more)
        e = p.event
        if isinstance(e, ScaffoldPatched):
            parent = state.versions.get(e.parent_version)
            if parent is not None:
                diff = "".join(difflib.unified_diff(_scaffold_lines(parent), _scaffold_lines(v), "parent scaffold", "this scaffold"))
                body.append(f"<pre class='diff'>{html.escape(diff)}</pre>")
        elif isinstance(e, AdapterCheckpointed):
            base = e.base_model
            body.append("<table class='adapter'>"
                        f"<tr><th>blob</th><td><code>{e.blob}</code></td></tr>"
                        f"<tr><th>base model</th><td>{html.escape(base.id if base else '-')} <code>{base.weights_hash if base else ''}</code></td></tr>"
                        f"<tr><th>recipe</th><td>{html.escape(e.recipe or 'rft')}</td></tr>"
                        f"<tr><th>seed</th><td>{e.seed}</td></tr>"
                        f"<tr><th>device</th><td>{html.escape(e.device or '-')} {html.escape(e.dtype)}</td></tr>"
                        f"<tr><th>data</th><td>{len(e.training_data)} samples: <code>{html.escape(', '.join(e.training_data[:6]))}"
                        f"{' ...' if len(e.training_data) > 6 else ''}</code></td></tr>"
                        f"<tr><th>hyper-parameters</th><td><code>{html.escape(msgspec.json.encode(e.hyper).decode())}</code></td></tr>"
                        f"<tr><th>curve</th><td>{_sparkline(e.curve, 'loss') or '-'} {_sparkline(e.curve, 'reward')}</td></tr></table>")
    return f"<details class='version' id='v-{v.version_id[:12]}'>{summary}{''.join(body)}</details>"
