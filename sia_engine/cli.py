"""The ``sia`` command: a thin face over the library (one library call per command).

Every command takes ``--store PATH`` (default ``./.sia``, or ``$SIA_STORE``) and ``--json``.
Library errors become a one-line message on stderr and exit status 2; ``sia verify`` exits 1
when the store does not verify.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from sia_engine import __version__
from sia_engine.errors import SiaError
from store import Envelope, Store, StoreError

F = TypeVar("F", bound=Callable[..., Any])
out = Console()
err = Console(stderr=True)


def _to_json(obj: Any) -> str:
    def enc(o: Any) -> Any:
        if isinstance(o, bytes):
            return msgspec.json.decode(o) if o[:1] in (b"{", b"[") else o.decode("utf-8", "replace")
        raise NotImplementedError

    return msgspec.json.encode(obj, enc_hook=enc).decode()


def _envelope_dict(e: Envelope) -> dict[str, Any]:
    return {
        "id": e.id, "parent": e.parent, "branch": e.branch, "seq": e.seq, "kind": e.kind,
        "schema": e.schema, "recorded_at": e.recorded_at.isoformat(), "payload": msgspec.json.decode(e.payload),
    }


def _fail(msg: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    sys.exit(code)


def store_options(f: F) -> F:
    f = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")(f)
    f = click.option(
        "--store", "store_path", default=".sia", envvar="SIA_STORE", show_default=True,
        type=click.Path(file_okay=False), help="Store directory.",
    )(f)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except (StoreError, SiaError) as e:
            _fail(str(e))

    return wrapper  # type: ignore[return-value]


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


class _RichHooks:
    """Progress bars for `sia run`: one bar per step, a line per decision."""

    def __init__(self, progress: Progress) -> None:
        self.p = progress
        self.task: Any = None

    def iteration(self, index: int, total: int) -> None:
        self.p.console.print(f"[bold]iteration {index + 1}/{total}[/]", highlight=False)

    def phase(self, name: str, total: int | None) -> None:
        if self.task is not None:
            self.p.remove_task(self.task)
        self.task = self.p.add_task(name, total=total)

    def advance(self, n: int = 1, *, loss: float | None = None) -> None:
        if self.task is not None:
            self.p.update(self.task, advance=n, description=f"LoRA training steps (loss {loss:.3f})" if loss is not None else None)

    def decided(self, candidate: Any, score: float, head_score: float | None, accepted: bool) -> None:
        verdict = "[green]accepted[/]" if accepted else "[yellow]rejected[/]"
        hs = "-" if head_score is None else f"{head_score:.3f}"
        self.p.console.print(f"  {candidate.lever} candidate {candidate.version_id[:12]}: val {score:.3f} vs head {hs} -> {verdict}", highlight=False)

    def finished(self, state: Any) -> None:
        if self.task is not None:
            self.p.remove_task(self.task)
            self.task = None


def _versions_table(state: Any) -> Table:
    t = Table(title="agent versions")
    for col in ("#", "version", "lever", "parent", "val score", "accepted?"):
        t.add_column(col)
    for v in state.ordered_versions():
        sc = v.score("val")
        acc = {"accepted": "yes", "rejected": "no", "candidate": "pending"}[v.status]
        if v.version_id == state.head:
            acc += " (head)"
        t.add_row(str(v.index), v.version_id[:12], v.lever, (v.parent or "-")[:12], "-" if sc is None else f"{sc:.3f}", acc)
    return t


@main.command()
@store_options
@click.option("--task", "task_name", required=True, help="Task to improve on (see `sia tasks`).")
@click.option("--model", "model_spec", default="smollm2", show_default=True, help="tiny | smollm2 | a local model folder | a cached hub id.")
@click.option("--openai-url", default=None, help="Use an OpenAI-compatible endpoint instead of a local model (scaffold lever only).")
@click.option("--openai-model", default=None, help="Model name at the endpoint.")
@click.option("--levers", type=click.Choice(["scaffold", "weights", "both"]), default=None, help="Levers to pull [default: both; scaffold for an endpoint].")
@click.option("--iterations", default=3, show_default=True, help="Improvement iterations (a budget: raise it to continue a run).")
@click.option("--seed", default=0, show_default=True)
@click.option("--branch", default="main", show_default=True)
@click.option("--feedback", type=click.Choice(["rule", "llm"]), default="rule", show_default=True, help="Feedback Agent: deterministic rules, or the model itself (falls back to rules).")
@click.option("--train-episodes", default=8, show_default=True)
@click.option("--val-episodes", default=8, show_default=True)
@click.option("--margin", default=0.0, show_default=True, help="A candidate must beat the head by more than this on val.")
@click.option("--lora-steps", default=8, show_default=True)
@click.option("--lora-r", default=8, show_default=True)
@click.option("--lora-lr", default=3e-4, show_default=True)
@click.option("--wall-time", default=None, type=float, help="Stop starting iterations after this many seconds.")
@click.option("--data", default=None, help="Data for tasks that take it (an .h5ad file for scrna-denoise).")
def run(store_path: str, as_json: bool, task_name: str, model_spec: str, openai_url: str | None, openai_model: str | None,
        levers: str | None, iterations: int, seed: int, branch: str, feedback: str, train_episodes: int, val_episodes: int,
        margin: float, lora_steps: int, lora_r: int, lora_lr: float, wall_time: float | None, data: str | None) -> None:
    """Run (or resume) the improvement loop on a task; every step is recorded in the store.

    Re-running the same command on the same store resumes where it stopped.

    \b
    Example:
      sia run --task arith --model tiny --iterations 4 --store /tmp/arith
    """
    from sia_engine.feedback import LLMPolicy, RulePolicy
    from sia_engine.loop import Loop, LoopConfig
    from sia_engine.model import LoraSettings
    from tasks import get_task

    task = get_task(task_name, data=data, protect=(str(Path(store_path).resolve()),)) if task_name != "arith" else get_task(task_name)
    if openai_url:
        from sia_engine.openai_compat import OpenAIChatModel

        model: Any = OpenAIChatModel(openai_url, openai_model or "default")
        levers = levers or "scaffold"
    else:
        from sia_engine.presets import load_model

        err.print(f"loading model {model_spec} ...", highlight=False)
        model = load_model(model_spec)
        if getattr(model, "label", ""):
            err.print(f"[yellow]{model_spec}: {model.label}[/]", highlight=False)
    chosen = ("scaffold", "weights") if (levers or "both") == "both" else (levers,)
    config = LoopConfig(
        task=task_name, levers=chosen, seed=seed, train_episodes=train_episodes, val_episodes=val_episodes, margin=margin,
        lora=LoraSettings(steps=lora_steps, r=lora_r, alpha=2 * lora_r, lr=lora_lr), feedback=feedback,
        iterations=iterations, wall_time_s=wall_time,
    )
    agent = LLMPolicy(model) if feedback == "llm" else RulePolicy()
    with Store.create(store_path) as s:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, disable=as_json) as bar:
            loop = Loop(s, task=task, model=model, feedback=agent, config=config, branch=branch, hooks=_RichHooks(bar), engine_version=__version__)
            try:
                state = loop.run()
            except KeyboardInterrupt:
                err.print("[yellow]interrupted[/]: everything recorded so far is kept; run the same command to resume")
                sys.exit(130)
        head = state.head_version
        summary = {
            "store": str(s.root.resolve()), "branch": branch, "task": task_name, "model": model.ref.id,
            "iterations": state.iteration + 1, "events": s.log.count(), "head": state.head,
            "head_val_score": head.score("val") if head else None,
            "versions": [{"version": v.version_id, "lever": v.lever, "val_score": v.score("val"), "status": v.status} for v in state.ordered_versions()],
        }
    if as_json:
        out.print_json(_to_json(summary))
        return
    out.print(_versions_table(state))
    out.print(f"head {str(state.head)[:12]} (val {summary['head_val_score']}) after {summary['iterations']} iteration(s), "
              f"{summary['events']} events. Inspect with: sia log --store {store_path} / sia verify / sia branches", highlight=False)


@main.command()
@click.argument("task_name", metavar="TASK", type=click.Choice(["scrna-denoise"]))
@click.option("--data", default=None, help="An .h5ad of raw integer counts [default: scanpy's pbmc68k_reduced].")
@click.option("--method", required=True, type=click.Choice(["no-denoising", "magic", "alra", "knn", "perfect"]), help="Baseline to run.")
@click.option("--seed", default=0, show_default=True, help="Seed of the molecular cross-validation split.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def baseline(task_name: str, data: str | None, method: str, seed: int, as_json: bool) -> None:
    """Score a reference method on a task: raw and normalised metrics.

    \b
    Example:
      sia baseline scrna-denoise --method magic --seed 0 --json
    """
    from tasks.scrna.baselines import BASELINES
    from tasks.scrna.data import DEFAULT_DATA, load_counts
    from tasks.scrna.metrics import control_scores, evaluate, mcv_split

    try:
        counts = load_counts(data or DEFAULT_DATA)
    except SiaError as e:
        _fail(str(e))
    split = mcv_split(counts, seed)
    denoised = split.test.astype(float) if method == "perfect" else BASELINES[method](split.train, seed=seed)
    scores = evaluate(split, denoised, control_scores(split))
    result = {"task": task_name, "data": data or DEFAULT_DATA, "method": method, "seed": seed,
              "cells": int(split.train.shape[0]), "genes": int(split.train.shape[1]), **msgspec.to_builtins(scores)}
    if as_json:
        out.print_json(_to_json(result))
        return
    t = Table(title=f"{task_name}: {method} (split seed {seed})")
    for col in ("metric", "raw", "normalised"):
        t.add_column(col)
    t.add_row("MSE (log-normalised)", f"{scores.mse:.5f}", f"{scores.mse_normalized:.4f}")
    t.add_row("Poisson (official)", f"{scores.poisson:.5f}", f"{scores.poisson_normalized:.4f}")
    t.add_row("score (mean)", "", f"{scores.score:.4f}")
    out.print(t)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def tasks(as_json: bool) -> None:
    """List the tasks `sia run` can improve on, with what data they need.

    \b
    Example:
      sia tasks --json
    """
    from tasks import DATA, DESCRIPTIONS, TASKS

    rows = [{"name": n, "description": DESCRIPTIONS[n], "data": DATA[n]} for n in sorted(TASKS)]
    if as_json:
        out.print_json(_to_json(rows))
        return
    t = Table(title="tasks")
    for col in ("name", "description", "data"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["description"], r["data"])
    out.print(t)


if __name__ == "__main__":
    main()
