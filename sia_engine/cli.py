"""The ``sia`` command: a thin face over the library (one library call per command).

Every command takes ``--store PATH`` (default ``./.sia``, or ``$SIA_STORE``) and ``--json``.
Library errors become a one-line message on stderr and exit status 2; ``sia verify`` exits 1
when the store does not verify.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import msgspec
from rich.progress import (
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from sia_engine import __version__
from sia_engine.cli_common import _envelope_dict, _fail, _to_json, err, out, store_options
from store import Store


@contextmanager
def _open(path: str, *, read_only: bool = False) -> Iterator[Store]:
    with Store.open(path, read_only=read_only) as s:
        yield s


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sia")
def main() -> None:
    """sia-engine: self-improving agents on an append-only, hash-chained event log.

    \b
    Example:
      sia demo --store ./.sia && sia verify --store ./.sia
    """


@main.command()
@store_options
@click.option("--branch", default="main", show_default=True, help="Name of the first branch.")
def init(store_path: str, as_json: bool, branch: str) -> None:
    """Create a store (a folder with log.duckdb and blobs/) and its first branch.

    \b
    Example:
      sia init --store ./runs/exp1
    """
    with Store.create(store_path) as s:
        if branch not in {b.name for b in s.log.branches()}:
            s.log.init_branch(branch)
        info = {"store": str(s.root.resolve()), "branches": [b.name for b in s.log.branches()], "events": s.log.count()}
    if as_json:
        out.print_json(_to_json(info))
    else:
        out.print(f"store ready at [bold]{info['store']}[/] (branches: {', '.join(info['branches'])})", highlight=False)


@main.command()
@store_options
@click.option("--branch", default="main", show_default=True, help="Branch whose history to show.")
@click.option("--kind", "kinds", multiple=True, help="Only these event kinds (repeatable).")
@click.option("--limit", default=50, show_default=True, help="Show the last N events (0: all).")
def log(store_path: str, as_json: bool, branch: str, kinds: tuple[str, ...], limit: int) -> None:
    """Show a branch's history, fork ancestry included.

    \b
    Example:
      sia log --branch main --kind version_accepted --kind version_rejected
    """
    with _open(store_path, read_only=True) as s:
        events = s.log.read(branch, kinds=list(kinds) or None)
    if limit > 0:
        events = events[-limit:]
    if as_json:
        out.print_json(_to_json([_envelope_dict(e) for e in events]))
        return
    t = Table(title=f"history of {branch}")
    for col in ("ref", "id", "kind", "recorded", "summary"):
        t.add_column(col, overflow="fold")
    for e in events:
        p = msgspec.json.decode(e.payload)
        summary = ", ".join(f"{k}={str(v)[:24]}" for k, v in p.items() if k != "kind" and not isinstance(v, (dict, list)))
        t.add_row(e.ref, e.id[:12], e.kind, e.recorded_at.strftime("%Y-%m-%d %H:%M:%S"), summary[:80])
    out.print(t)


@main.command()
@store_options
@click.argument("at", metavar="BRANCH@SEQ")
@click.argument("new")
@click.option("--reason", default="", help="Why the fork (recorded in its branch_forked event).")
def fork(store_path: str, as_json: bool, at: str, new: str, reason: str) -> None:
    """Fork a new branch at an event of a branch (no events are copied).

    Continue it with other settings: its first `sia run --branch NEW ...` records them on the fork.

    \b
    Example:
      sia fork main@12 scaffold-only --reason "what if only the scaffold moved"
      sia run --task scrna-denoise --branch scaffold-only --levers scaffold
    """
    from sia_engine.history import fork as fork_branch

    source, sep, seq = at.rpartition("@")
    if not sep or not seq.isdigit() or not source:
        _fail(f"{at!r} is not BRANCH@SEQ (for example main@12; `sia log` shows the seqs)")
    with _open(store_path) as s:
        hist = fork_branch(s.log, new, source=source, at_seq=int(seq), reason=reason or f"forked from {at}", blobs=s.blobs)
        info = {"branch": new, "source": source, "seq": int(seq), "head": hist.state.head, "event": hist.head}
    if as_json:
        out.print_json(_to_json(info))
        return
    out.print(f"branch {new} forked from {source}#{seq}; head version {str(info['head'])[:12]}. "
              f"Continue it with: sia run --branch {new} ... (other settings are recorded on the fork)", highlight=False)


@main.command()
@store_options
@click.argument("branch")
@click.argument("version")
@click.option("--reason", required=True, help="Why (recorded in the rolled_back event).")
def rollback(store_path: str, as_json: bool, branch: str, version: str, reason: str) -> None:
    """Move a branch's head back to an earlier accepted version of its lineage (a new event).

    \b
    Example:
      sia rollback main 1a2b3c4d --reason "the adapter overfits"
    """
    from replay import locate
    from sia_engine.events import RolledBack
    from sia_engine.history import History

    with _open(store_path) as s:
        found = locate(s.log, version, branch=branch)
        if found.version is None:
            _fail(f"{version!r} names an event, not an agent version of branch {branch!r}")
        assert found.version is not None
        hist = History.open(s.log, branch, blobs=s.blobs)
        head = hist.state.head
        v = found.version
        if v.status != "accepted" or v.version_id == head:
            _fail(f"version {v.version_id[:12]} is {'the head' if v.version_id == head else v.status}: "
                  f"roll back to an earlier accepted version of {branch!r} (its accepted versions: "
                  + ", ".join(x[:12] for x in dict.fromkeys(hist.state.head_history) if x != head) + ")")
        if hist.state.phase != "idle":
            _fail(f"branch {branch!r} is inside iteration {hist.state.iteration} ({hist.state.phase}): finish it with sia run first")
        hist.record(RolledBack(to_version=v.version_id, from_version=str(head), reason=reason))
        info = {"branch": branch, "head": v.version_id, "previous": head, "event": hist.head}
    if as_json:
        out.print_json(_to_json(info))
        return
    out.print(f"branch {branch}: head {str(head)[:12]} -> {v.version_id[:12]} (recorded; nothing deleted)", highlight=False)


@main.command()
@store_options
@click.argument("version")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write the agent into.")
@click.option("--branch", default="main", show_default=True, help="Branch whose state resolves the version.")
@click.option("--model", "model_spec", default=None, help="The base model at hand (tiny | smollm2 | a folder | a cached hub id): its weights sha256 must be the recorded one.")
def rebuild(store_path: str, as_json: bool, version: str, out_dir: str, branch: str, model_spec: str | None) -> None:
    """Rebuild a runnable agent version: scaffold.json, the adapter in peft's layout, agent.json.

    Every blob is re-hashed, the version id recomputed, and with --model the base model's
    weights hash compared with the log's; a mismatch names what differs.

    \b
    Example:
      sia rebuild 1a2b3c4d --out ./agent --model smollm2
    """
    from replay.agent import rebuild_agent

    weights = None
    if model_spec is not None:
        from sia_engine.presets import model_weights_hash

        weights = model_weights_hash(model_spec)
    with _open(store_path, read_only=True) as s:
        agent = rebuild_agent(s, version, out_dir, branch=branch, base_weights_hash=weights)
    if as_json:
        out.print_json(_to_json(agent))
        return
    bm = agent["base_model"]
    out.print(f"version {agent['version']} ({agent['lever']}, {agent['status']}) written to {out_dir}: scaffold.json"
              + (", adapter/ (peft layout)" if agent["adapter"] else "") + ", agent.json", highlight=False)
    out.print(f"base model {bm['id']} ({bm['revision']}), weights sha256 {bm['weights_hash'] or '-'}"
              + (" - checked against the model at hand" if weights else " - not checked (give --model to check it)"), highlight=False)


@main.command()
@store_options
@click.argument("ref")
@click.option("--branch", default="main", show_default=True, help="Branch whose state resolves version ids.")
def show(store_path: str, as_json: bool, ref: str, branch: str) -> None:
    """Show one event (id, id prefix or BRANCH#SEQ) or one agent version (id or prefix).

    \b
    Example:
      sia show main#3
      sia show 1a2b3c4d --branch main
    """
    from replay import locate

    with _open(store_path, read_only=True) as s:
        found = locate(s.log, ref, branch=branch)
    if found.event is not None:
        data: dict[str, Any] = _envelope_dict(found.event)
        title = f"event {found.event.ref}"
    else:
        assert found.version is not None
        data = msgspec.to_builtins(found.version)
        title = f"version {found.version.version_id} (branch {found.branch})"
    if as_json:
        out.print_json(_to_json(data))
    else:
        out.rule(title)
        out.print_json(_to_json(data))


@main.command()
@store_options
def branches(store_path: str, as_json: bool) -> None:
    """List branches with their fork points and heads.

    \b
    Example:
      sia branches --json
    """
    with _open(store_path, read_only=True) as s:
        infos = s.log.branches()
    if as_json:
        out.print_json(_to_json([msgspec.to_builtins(b) for b in infos]))
        return
    t = Table(title="branches")
    for col in ("name", "forked from", "own events", "head"):
        t.add_column(col)
    for b in infos:
        base = f"{b.base_branch}#{b.base_seq}" if b.base_branch else "-"
        t.add_row(b.name, base, str(b.head_seq + 1), (b.head_id or "-")[:12])
    out.print(t)


@main.command()
@store_options
def verify(store_path: str, as_json: bool) -> None:
    """Check the hash chain, every event, every blob and every snapshot; exit 1 on failure.

    \b
    Example:
      sia verify --store ./runs/exp1 || echo "tampered"
    """
    from sia_engine.integrity import verify_store

    with _open(store_path, read_only=True) as s:
        report = verify_store(s.log, s.blobs)
    if as_json:
        out.print_json(_to_json({**msgspec.to_builtins(report), "ok": report.ok}))
    elif report.ok:
        out.print(
            f"[green]OK[/]: {report.n_events} events on {report.n_branches} branches, "
            f"{report.n_blobs} blobs, {report.n_snapshots} snapshots verified", highlight=False,
        )
    else:
        out.print(f"[bold red]FAILED[/]: {len(report.problems)} problem(s); first: {report.first}", highlight=False, soft_wrap=True)
        for p in report.problems[1:20]:
            out.print(f"  {p}", highlight=False, soft_wrap=True)
    if not report.ok:
        sys.exit(1)


@main.command()
@store_options
@click.option("--out", "out_path", default="sia-audit.html", show_default=True, type=click.Path(dir_okay=False), help="Where to write the HTML report.")
def audit(store_path: str, as_json: bool, out_path: str) -> None:
    """Write a self-contained HTML audit report: lineage, scores per version and lever, integrity.

    Exits 1 (after writing the report) when the store does not verify.

    \b
    Example:
      sia audit --store ./.sia --out audit.html
    """
    from replay import audit_report

    with _open(store_path, read_only=True) as s:
        page, report = audit_report(s.log, s.blobs, title=f"sia-engine audit of {s.root.resolve()}")
    Path(out_path).write_text(page, encoding="utf-8")
    info = {"report": str(Path(out_path).resolve()), "verified": report.ok, "events": report.n_events, "problems": len(report.problems)}
    if as_json:
        out.print_json(_to_json(info))
    else:
        out.print(f"audit report written to [bold]{info['report']}[/] ({'verified' if report.ok else 'NOT verified'})", highlight=False)
    if not report.ok:
        sys.exit(1)


@main.command()
@store_options
@click.argument("query")
def sql(store_path: str, as_json: bool, query: str) -> None:
    """Run one read-only SELECT over the log (tables: events, branches, snapshots).

    \b
    Example:
      sia sql "SELECT kind, count(*) AS n FROM events GROUP BY kind ORDER BY n DESC"
      sia sql "SELECT payload->>'score' AS score FROM events WHERE kind = 'version_evaluated'"
    """
    with _open(store_path, read_only=True) as s:
        cols, rows = s.log.sql(query)
    if as_json:
        out.print_json(_to_json([dict(zip(cols, (str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v for v in r))) for r in rows]))
        return
    t = Table()
    for c in cols:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*("NULL" if v is None else str(v) for v in r))
    out.print(t)


@main.command()
@store_options
@click.option("--iterations", default=4, show_default=True, help="Improvement iterations to record.")
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic outputs and scores.")
def demo(store_path: str, as_json: bool, iterations: int, seed: int) -> None:
    """Record a synthetic sample history (no model), verify it and show it.

    Outputs and scores are seeded random numbers, labelled synthetic in the log; every event
    goes through the real recording path, so the history verifies, forks and rolls back.

    \b
    Example:
      sia demo --store /tmp/demo-store --iterations 6
    """
    from sia_engine.demo import record_sample_history
    from sia_engine.integrity import verify_store

    with Store.create(store_path) as s:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, disable=as_json) as bar:
            task = bar.add_task("recording", total=None)
            hist = record_sample_history(s, iterations=iterations, seed=seed, engine_version=__version__, on_step=lambda m: bar.update(task, description=m))
        report = verify_store(s.log, s.blobs)
        versions = hist.state.ordered_versions()
        summary = {
            "store": str(s.root.resolve()),
            "events": s.log.count(),
            "branches": [b.name for b in s.log.branches()],
            "head": hist.state.head,
            "verified": report.ok,
            "versions": [
                {"version": v.version_id, "lever": v.lever, "score": v.score(), "status": v.status} for v in versions
            ],
        }
    if as_json:
        out.print_json(_to_json(summary))
    else:
        t = Table(title="versions on main (synthetic scores)")
        for col in ("#", "version", "lever", "val score", "status"):
            t.add_column(col)
        for v in versions:
            sc = v.score()
            t.add_row(str(v.index), v.version_id[:12], v.lever, "-" if sc is None else f"{sc:.3f}", v.status)
        out.print(t)
        verdict = "[green]verified[/]" if report.ok else f"[red]NOT verified: {report.first}[/]"
        out.print(f"{summary['events']} events on {len(summary['branches'])} branches, {verdict}. "
                  f"Next: sia log --store {store_path} / sia branches / sia sql", highlight=False)
    if not report.ok:
        sys.exit(1)


from sia_engine.cli_run import baseline, run, score, tasks  # noqa: E402 - the loop's commands live there

for _cmd in (run, tasks, baseline, score):
    main.add_command(_cmd)


if __name__ == "__main__":
    main()
