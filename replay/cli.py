"""The replay commands of ``sia`` (registered as ``sia_engine.commands`` entry points): show,
audit, fork, rollback, rebuild, diff, compare and export (``sia replay``: ``replay.cli_replay``),
each a thin face over a library call of ``replay`` or ``sia_engine.domain.history``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec

from sia_engine.cli.api import (
    emit_json,
    envelope_dict,
    fail,
    open_store,
    out,
    store_options,
    styled,
)
from store.files import atomic_write

if TYPE_CHECKING:
    from sia_engine.loop.task import Task

__all__ = ["audit", "compare", "diff", "export", "fork", "rebuild", "rollback", "show"]


@click.command()
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

    with open_store(store_path, read_only=True) as s:
        found = locate(s.log, ref, branch=branch)
    if found.event is not None:
        data: dict[str, Any] = envelope_dict(found.event)
        title = f"event {found.event.ref}"
    else:
        assert found.version is not None
        data = msgspec.to_builtins(found.version)
        title = f"version {found.version.version_id} (branch {found.branch})"
    if as_json:
        emit_json(data)
    else:
        out.rule(title)
        emit_json(data)


@click.command()
@store_options
@click.option("--out", "out_path", default="sia-audit.html", show_default=True, type=click.Path(dir_okay=False), help="Where to write the HTML report.")
@click.option("--data", default=None, help="The task's data, for tasks that take it (the replay re-scores with it).")
@click.option("--retrain", is_flag=True, help="Also train every adapter again from its recorded data, seed and settings (byte for byte).")
@click.option("--model", "model_spec", default=None, help="--retrain: the base model (tiny | smollm2 | a folder) [default: the run's].")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False), help="A signed checkpoint (sia checkpoint) the log must extend.")
@click.option("--public-key", "public_key", default=None, type=click.Path(dir_okay=False), help="The .pub key that must have signed --checkpoint.")
def audit(store_path: str, as_json: bool, out_path: str, data: str | None, retrain: bool, model_spec: str | None,
          checkpoint: str | None, public_key: str | None) -> None:
    """Write a self-contained HTML audit report: what was proven, lineage, scores, integrity.

    It leads with what was proven: integrity, recorded replay of every branch, adapters
    re-derived (--retrain), data and environment as recorded, a signed checkpoint (given).
    Exits 1 (after writing the report) when the store does not verify or a proof fails.

    \b
    Example:
      sia audit --store ./.sia --out audit.html
      sia audit --retrain --checkpoint cp.json --public-key audit.key.pub
    """
    from replay import audit_report
    from replay.rebuild import state_at
    from replay.reexecute import load_base_model

    if (checkpoint is None) != (public_key is None):
        fail("--checkpoint and --public-key go together: the checkpoint is only as good as the key that must have signed it")
    with open_store(store_path, read_only=True) as s:
        runs = [run for b in s.log.branches() if (run := state_at(s.log, b.name).run) is not None]
        names = {run.task for run in runs}
        task = task_or_none(next(iter(names)), data) if len(names) == 1 else None  # one task per store, re-scored by it
        model = load_base_model(runs[0].base_model, model_spec) if retrain and runs else None
        proof = None
        if checkpoint is not None and public_key is not None:
            from store.checkpoint import check_checkpoint

            proof = "; ".join(check_checkpoint(s.log, checkpoint, public_key))
        page, report = audit_report(s.log, s.blobs, title=f"sia-engine audit of {s.root.resolve()}", task=task, retrain=model, checkpoint=proof)
        failed = 'class="bad">FAILED' in page
    atomic_write(out_path, page.encode("utf-8"), mode=0o644)  # a symlink at out_path is replaced, never followed
    info = {"report": str(Path(out_path).resolve()), "verified": report.ok, "events": report.n_events, "problems": len(report.problems),
            "proofs_failed": failed}
    if as_json:
        emit_json(info)
    else:
        said = "verified" if report.ok and not failed else "NOT verified" if not report.ok else "a proof FAILED (see the report's first table)"
        out.print(styled("audit report written to ", (str(info["report"]), "bold"), f" ({said})"))
    if not report.ok or failed:
        sys.exit(1)


@click.command()
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
    from replay.branching import fork_branch

    source, sep, seq = at.rpartition("@")
    if not sep or not seq.isdigit() or not source:
        fail(f"{at!r} is not BRANCH@SEQ (for example main@12; `sia log` shows the seqs)")
    with open_store(store_path) as s:
        hist = fork_branch(s, new, source=source, at_seq=int(seq), reason=reason)
        info = {"branch": new, "source": source, "seq": int(seq), "head": hist.state.head, "event": hist.head}
    if as_json:
        emit_json(info)
        return
    out.print(f"branch {new} forked from {source}#{seq}; head version {str(info['head'])[:12]}. "
              f"Continue it with: sia run --branch {new} ... (other settings are recorded on the fork)", highlight=False)


@click.command()
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
    from replay.branching import RollbackRefused
    from replay.branching import rollback as roll_back

    with open_store(store_path) as s:
        previous = s.log.branch(branch).head_id
        try:
            hist = roll_back(s, branch, version, reason=reason)
        except RollbackRefused as e:
            fail(e.reason)
            raise
        head = hist.state.head_history[-2] if len(hist.state.head_history) > 1 else None
        v_id = str(hist.state.head)
        info = {"branch": branch, "head": v_id, "previous": head, "event": hist.head, "previous_event": previous}
    if as_json:
        emit_json(info)
        return
    out.print(f"branch {branch}: head {str(head)[:12]} -> {v_id[:12]} (recorded; nothing deleted)", highlight=False)


@click.command()
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
        from sia_engine.models.presets import model_weights_hash

        weights = model_weights_hash(model_spec)
    with open_store(store_path, read_only=True) as s:
        agent = rebuild_agent(s, version, out_dir, branch=branch, base_weights_hash=weights)
    if as_json:
        emit_json(agent)
        return
    bm = agent["base_model"]
    out.print(f"version {agent['version']} ({agent['lever']}, {agent['status']}) written to {out_dir}: scaffold.json"
              + (", adapter/ (peft layout)" if agent["adapter"] else "") + ", agent.json", highlight=False)
    out.print(f"base model {bm['id']} ({bm['revision']}), weights sha256 {bm['weights_hash'] or '-'}"
              + (" - checked against the model at hand" if weights else " - not checked (give --model to check it)"), highlight=False)


@click.command()
@store_options
@click.argument("a")
@click.argument("b")
@click.option("--branch", default="main", show_default=True, help="Branch whose state resolves the versions.")
def diff(store_path: str, as_json: bool, a: str, b: str, branch: str) -> None:
    """Two agent versions side by side: scaffold text diff, adapter update norms per module, scores.

    \b
    Example:
      sia diff 1a2b3c4d 5e6f7a8b
    """
    from replay.diff import diff_versions

    with open_store(store_path, read_only=True) as s:
        d = diff_versions(s, a, b, branch=branch)
    if as_json:
        emit_json(d)
        return
    from rich.table import Table

    for side in ("a", "b"):
        x = d[side]
        out.print(f"{side}: {x['version'][:12]} {x['lever']} {x['status']} scores {x['scores']} adapter {str(x['adapter'])[:12]}", highlight=False)
    out.print(d["scaffold_diff"] or "scaffolds are identical", highlight=False, markup=False)
    if d["adapter_modules"]:
        t = Table(title="adapter updates (Frobenius norm of B @ A * alpha / r)")
        for col in ("module", "a", "b", "a - b"):
            t.add_column(col)
        for m in d["adapter_modules"]:
            t.add_row(m["module"], f"{m['norm_a']:.4g}", f"{m['norm_b']:.4g}", f"{m['norm_diff']:.4g}")
        out.print(t)
    else:
        out.print("neither version has an adapter", highlight=False)


@click.command()
@store_options
@click.argument("branches", nargs=-1, required=True)
def compare(store_path: str, as_json: bool, branches: tuple[str, ...]) -> None:
    """Branches side by side: per iteration the lever, the candidate's score, the decision, the head.

    \b
    Example:
      sia compare main scaffold-only
    """
    from replay.diff import compare_branches

    with open_store(store_path, read_only=True) as s:
        rows = compare_branches(s, list(branches))
    if as_json:
        emit_json(rows)
        return
    from rich.table import Table

    t = Table(title="branches per iteration")
    for col in ("branch", "iteration", "recorded on", "lever", "candidate", "decision", "head after"):
        t.add_column(col)
    for r in rows:
        lever = r["lever"] + (f" ({r['recipe']})" if r["recipe"] else "")
        cand = "-" if r["candidate_score"] is None else f"{r['candidate_score']:.3f}"
        head = "-" if r["head_score"] is None else f"{r['head_score']:.3f}"
        t.add_row(r["branch"], str(r["iteration"]), r["from"], lever, cand, r["decision"], head)
    out.print(t)


@click.command()
@store_options
@click.option("--parquet", "folder", required=True, type=click.Path(file_okay=False), help="Folder for events, versions and trajectories .parquet.")
def export(store_path: str, as_json: bool, folder: str) -> None:
    """Export the store to Parquet: events, versions and trajectories (the store is only read).

    \b
    Example:
      sia export --parquet ./export && python -c "import pyarrow.parquet as pq; print(pq.read_table('export/versions.parquet'))"
    """
    from replay.export import export_parquet

    with open_store(store_path, read_only=True) as s:
        counts = export_parquet(s, folder)
    if as_json:
        emit_json(counts)
        return
    out.print(", ".join(f"{n} {k}" for k, n in counts.items()) + f" written to {folder}", highlight=False)


def task_or_none(name: str, data: str | None) -> Task | None:
    """The run's task, or None when it cannot be built here (replay then says what it skipped)."""
    from sia_engine.errors import SiaError
    from sia_engine.loop.registry import get_task

    try:
        return get_task(name, data=data)
    except SiaError:
        return None
