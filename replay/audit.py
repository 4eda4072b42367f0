"""``audit_report``: a self-contained HTML report of a store (no script, no external asset).

First what was proven (integrity, recorded replay, adapters re-derived when asked, data and
environment as recorded, a signed checkpoint when given), then the integrity check and the
recorded replay of every branch in detail; then the score per iteration of
every branch as a plot; then, per branch, the run, its forks and rollbacks, the lineage of agent
versions (an inline SVG graph), scores per lever, and every version collapsed (``<details>``) with
what made it: the verdict's rationale and evidence (trajectories and outputs), the patch as a text
diff, or the adapter's provenance (blob, base model hash, recipe, data, hyper-parameters, loss
curve). Collapsed versions keep a 1,000-iteration history readable; the newest ``max_versions``
of a branch are listed, the rest counted."""

from __future__ import annotations

import html
from collections import Counter

from replay.audit_experiment import experiment_section
from replay.audit_parts import ProvenanceProjection, iteration_plot, version_details
from replay.diff import IterationRows
from sia_engine.domain.integrity import IntegrityReport, check_store
from sia_engine.domain.projection import KindCounts, Recorded, StateProjection, fold, histories
from sia_engine.domain.state import AgentState, Version
from replay.recorded import ReplayDivergence, ReplayReport
from sia_engine.loop.task import Task
from sia_engine.models.protocol import Model
from store import BlobStore, EventLog

__all__ = ["audit_report"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222} table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:.3em .6em;font-size:.9em} th{background:#f3f3f3}
.ok{color:#176917;font-weight:bold} .bad{color:#b00020;font-weight:bold} .warn{color:#8a5a00} code{font-size:.85em}
details.version{border:1px solid #ddd;margin:.3em 0;padding:.3em .6em} details.version summary{cursor:pointer}
pre.diff{background:#f7f7f7;padding:.5em;font-size:.8em;overflow-x:auto} .small,.legend{font-size:.85em;color:#555}
"""
_COLOURS = {"initial": "#555", "scaffold": "#1f77b4", "weights": "#d62728"}
_LEGEND = (
    '<p style="font-size:.85em">versions left to right in creation order, higher = better validation score; '
    '<span style="color:#1f77b4">&#9679; scaffold</span>, <span style="color:#d62728">&#9679; weights</span>, '
    '<span style="color:#555">&#9679; initial</span>; hollow = rejected; black ring = head; lines join a version '
    "to its parent; hover a node for its id and score</p>"
)


def _lineage_svg(state: AgentState) -> str:
    """Versions left to right in creation order, height by validation score; edges to parents."""
    versions = state.ordered_versions()
    if not versions:
        return "<p>no versions</p>"
    scores = [v.score("val") for v in versions]
    known = [s for s in scores if s is not None]
    lo, hi = (min(known), max(known)) if known else (0.0, 1.0)
    span = (hi - lo) or 1.0
    w, h, pad = min(max(300, 70 * len(versions)), 1600), 220, 30  # long histories are squeezed, not scrolled
    labels = len(versions) <= 60
    pos: dict[str, tuple[float, float]] = {}
    for i, (v, s) in enumerate(zip(versions, scores, strict=True)):
        x = pad + i * (w - 2 * pad) / max(1, len(versions) - 1)
        y = h - pad - ((s - lo) / span if s is not None else 0.0) * (h - 2 * pad)
        pos[v.version_id] = (x, y)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img">']
    for v in versions:
        if v.parent in pos:
            (x1, y1), (x2, y2) = pos[v.parent], pos[v.version_id]
            parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#999"/>')
    for v, s in zip(versions, scores, strict=True):
        x, y = pos[v.version_id]
        fill = _COLOURS.get(v.lever, "#555") if v.status != "rejected" else "#fff"
        ring = "#000" if v.version_id == state.head else _COLOURS.get(v.lever, "#555")
        label = html.escape(f"{v.index}: {v.lever} {v.status} val={'-' if s is None else f'{s:.3f}'} {v.version_id[:12]}")
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{7 if labels else 3}" fill="{fill}" stroke="{ring}" stroke-width="2"><title>{label}</title></circle>')
        if labels:
            parts.append(f'<text x="{x:.1f}" y="{y - 11:.1f}" font-size="10" text-anchor="middle">{v.index}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _versions_table(state: AgentState, limit: int = 200) -> str:
    rows = []
    versions = state.ordered_versions()
    for v in versions[-limit:]:
        s = v.score("val")
        head = " (head)" if v.version_id == state.head else ""
        adapter = v.adapter[:12] if v.adapter else "-"
        rows.append(
            f"<tr><td>{v.index}</td><td><code>{v.version_id[:16]}</code></td><td>{v.lever}</td>"
            f"<td><code>{(v.parent or '-')[:12]}</code></td><td>{'-' if s is None else f'{s:.4f}'}</td>"
            f"<td>{v.status}{head}</td><td><code>{adapter}</code></td><td>{len(v.scaffold.examples)}</td></tr>"
        )
    older = f"<p class='small'>the newest {limit} of {len(versions)} versions; all are listed below</p>" if len(versions) > limit else ""
    return (older + "<table><tr><th>#</th><th>version</th><th>lever</th><th>parent</th><th>val score</th><th>status</th>"
            "<th>adapter</th><th>few-shot examples</th></tr>" + "".join(rows) + "</table>")


def _by_lever(versions: list[Version]) -> str:
    rows = []
    for lever in ("scaffold", "weights"):
        mine = [v for v in versions if v.lever == lever]
        if mine:
            accepted = sum(v.status == "accepted" for v in mine)
            best = max((s for v in mine if (s := v.score("val")) is not None), default=None)
            rows.append(f"<tr><td>{lever}</td><td>{len(mine)}</td><td>{accepted}</td><td>{'-' if best is None else f'{best:.4f}'}</td></tr>")
    return "<table><tr><th>lever</th><th>candidates</th><th>accepted</th><th>best val score</th></tr>" + "".join(rows) + "</table>"


def _replay(branch: str, recs: list[Recorded], task: Task | None, blobs: BlobStore | None, retrain: Model | None) -> ReplayReport | ReplayDivergence:
    from replay.recorded import replay_records

    try:
        return replay_records(branch, recs, task, blobs=blobs, retrain=retrain)
    except ReplayDivergence as e:
        return e


def _replay_line(branch: str, r: ReplayReport | ReplayDivergence) -> str:
    if not isinstance(r, ReplayReport):
        return f'<li class="bad">{html.escape(branch)}: DIVERGES: {html.escape(str(r))}</li>'
    skipped = "".join(f' <span class="warn">(not recomputed: {html.escape(x)})</span>' for x in (*r.skipped, *([r.unfinished] if r.unfinished else [])))
    return (f'<li class="ok">{html.escape(branch)}: REPLAYS: {r.outputs} outputs replayed and {r.rescored} re-scored; {r.verdicts} verdicts '
            f"({r.choices} model choices), {r.patches} patches, {r.adapters} adapters' plans, {r.evaluations} evaluations, {r.decisions} gate "
            f"decisions and {r.baselines} baselines recomputed as recorded{skipped}</li>")


def _proven(report: IntegrityReport, replays: dict[str, ReplayReport | ReplayDivergence], retrain: bool, checkpoint: str | None) -> str:
    """What the audit proved, first: integrity, recorded replay, adapters re-derived, data and
    environment as recorded, a signed checkpoint."""
    def row(what: str, ok: bool | None, text: str) -> str:
        cls, word = {True: ("ok", "PROVEN"), False: ("bad", "FAILED"), None: ("warn", "NOT CHECKED")}[ok]
        return f'<tr><td>{what}</td><td class="{cls}">{word}</td><td>{html.escape(text)}</td></tr>'

    done = [r for r in replays.values() if isinstance(r, ReplayReport)]
    bad = [(b, r) for b, r in replays.items() if not isinstance(r, ReplayReport)]
    rows = [row("integrity", report.ok, f"{report.n_events} events, {report.n_branches} branch(es), {report.n_blobs} blob(s): every id, "
                "parent link and blob hash" if report.ok else f"{len(report.problems)} problem(s), listed below")]
    if not report.ok:
        rows.append(row("recorded replay", None, "a history that does not verify is not replayed"))
    elif bad:
        rows.append(row("recorded replay", False, f"{bad[0][0]}: {bad[0][1]}"))
    else:
        light = [r for r in done if r.skipped]
        rows.append(row("recorded replay", None if light else True, f"{len(done)} of {len(replays)} branches replay as recorded through the "
                        "loop's own steps" + (f"; partly only: {light[0].skipped[0]}" if light else "")))
    n_adapters, n_rederived = sum(r.adapters for r in done), sum(r.rederived for r in done)
    light = [r for r in done if r.skipped]
    if not retrain:
        rows.append(row("adapters re-derived", None, "not asked (sia audit --retrain trains every adapter again)"))
    elif light:
        rows.append(row("adapters re-derived", None, f"could not: {light[0].skipped[0]}"))
    else:
        rows.append(row("adapters re-derived", not bad and n_rederived == n_adapters, f"adapters re-derived: {n_rederived} of {n_adapters}"))
    data = sorted({r.data for r in done})
    rows.append(row("data as recorded", True if data == ["as recorded"] else None, ", ".join(d or "not checked (the task is not available here)" for d in data) or "-"))
    env = sorted({x for r in done for x in r.environment})
    rows.append(row("environment as recorded", None if env or not done else True,
                    "; ".join(env) if env else "the same library versions and platform as recorded" if done else "no branch replayed"))
    if checkpoint is None:
        rows.append(row("signed checkpoint", None, "none given (sia audit --checkpoint CP --public-key KEY.pub)"))
    else:
        rows.append(row("signed checkpoint", checkpoint == "", checkpoint or "the log extends the signed checkpoint"))
    return '<table id="proven"><tr><th>check</th><th>result</th><th>what</th></tr>' + "".join(rows) + "</table>"


class _Branch:
    """One branch read once: its records, and every projection the report shows, from one pass."""

    def __init__(self, name: str, recs: list[Recorded]) -> None:
        self.recs = recs
        self.kinds, self.state, self.provenance, rows = fold([KindCounts(), StateProjection(), ProvenanceProjection(), IterationRows(name)], recs)
        self.rows = IterationRows.finish(rows, self.state)


def audit_report(log: EventLog, blobs: BlobStore | None = None, *, title: str = "sia-engine audit", task: Task | None = None,
                 max_versions: int = 1000, retrain: Model | None = None, checkpoint: str | None = None) -> tuple[str, IntegrityReport]:
    """The HTML report and the integrity report it shows (``task``: replay through the loop's
    steps and re-score; None replays what needs no task; ``retrain``: train every adapter again;
    ``checkpoint``: the outcome of checking a signed checkpoint, "" when the log extends it)."""
    branches = log.branches()
    own_envs = {b.name: list(log.read(b.name, after_seq=-1)) for b in branches}  # each branch read once
    report, own = check_store(log, blobs, own_envs)  # and decoded once, as it is checked

    def n(k: int, word: str) -> str:
        return f"{k} {word}{'' if k == 1 else ('es' if word.endswith('ch') else 's')}"

    verdict = (f'<p class="ok" id="integrity">VERIFIED: {n(report.n_events, "event")}, {n(report.n_branches, "branch")}, '
               f'{n(report.n_blobs, "blob")}, {n(report.n_snapshots, "snapshot")}</p>') if report.ok else (
        f'<p class="bad" id="integrity">NOT VERIFIED: {len(report.problems)} problem(s)</p><ul>'
        + "".join(f"<li><code>{html.escape(str(p))}</code></li>" for p in report.problems[:50]) + "</ul>")
    read = {name: _Branch(name, recs if report.ok else []) for name, recs in histories(branches, own).items()}
    replays = {name: _replay(name, r.recs, task, blobs, retrain) for name, r in read.items()} if report.ok else {}
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>What was proven</h2>", _proven(report, replays, retrain is not None, checkpoint),
            "<h2>Integrity</h2>", verdict]
    unverified = {} if report.ok else histories(branches, own_envs)  # counted, never reduced
    if not report.ok:
        body.append("<p>A history that does not verify is not replayed or reduced into claims.</p>")
    else:
        body += ["<h2>Replay (recorded)</h2>", '<ul id="replay">' + "".join(_replay_line(name, r) for name, r in replays.items()) + "</ul>"]
        body += ["<h2>Score per iteration</h2>", iteration_plot([row for r in read.values() for row in r.rows]), *experiment_section(own)]
    for b in branches:
        kinds = read[b.name].kinds if report.ok else Counter(e.kind for e in unverified[b.name])
        origin = f" (forked from {b.base_branch}#{b.base_seq})" if b.base_branch else ""
        body.append(f"<h2 class='branch'>Branch {html.escape(b.name)}{html.escape(origin)}</h2>")
        body.append(f"<p>head <code>{b.head_id or '-'}</code>; events: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + "</p>")
        if not report.ok:
            continue  # a history that does not verify is not reduced into claims
        state, prov, rollbacks = read[b.name].state, read[b.name].provenance.versions, read[b.name].provenance.rollbacks
        if state.run is not None:
            body.append(f"<p>run <code>{html.escape(state.run.run_id)}</code>, task {html.escape(state.run.task)}, base model "
                        f"<code>{html.escape(state.run.base_model.id)}</code> (weights sha256 <code>{state.run.base_model.weights_hash or '-'}</code>), "
                        f"levers {', '.join(state.run.levers)}, {state.iteration + 1} iteration(s)</p>")
        if state.forks or rollbacks:
            body.append("<ul>" + "".join(f"<li>fork point {html.escape(f)}</li>" for f in state.forks)
                        + "".join(f"<li>rollback {html.escape(r)}</li>" for r in rollbacks) + "</ul>")
        versions = state.ordered_versions()
        shown = versions[-max_versions:]
        omitted = f"<p class='small'>{len(versions) - len(shown)} older versions not listed (see <code>sia show</code>)</p>" if len(shown) < len(versions) else ""
        body += ["<h3>Lineage</h3>", _lineage_svg(state), _LEGEND, "<h3>Scores per lever</h3>", _by_lever(versions),
                 "<h3>Versions</h3>", _versions_table(state), omitted,
                 "<div class='versions'>" + "".join(version_details(state, v, prov.get(v.version_id)) for v in shown) + "</div>"]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style>"
            f"</head><body>{''.join(body)}</body></html>")
    return page, report
