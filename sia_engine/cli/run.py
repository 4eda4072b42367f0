"""`sia run` and `sia tasks`: the commands that drive models and tasks (found through entry points)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
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
from sia_engine.cli.api import (
    emit_json,
    err,
    fail,
    load_agent_model,
    out,
    require_verified,
    store_options,
    styled,
    weak_sandbox_option,
)
from sia_engine.cli.progress import RichHooks
from sia_engine.domain.projection import RecipeByVersion, project
from sia_engine.errors import SiaError
from store import Store

if TYPE_CHECKING:
    from sia_engine.domain.state import AgentState
    from sia_engine.loop.feedback.rule import FeedbackAgent
    from sia_engine.loop.loop import LoopConfig
    from sia_engine.loop.task import Task
    from sia_engine.models.protocol import Model

__all__ = ["run", "tasks"]


def _versions_table(state: Any, recipes: dict[str, str]) -> Table:
    t = Table(title="agent versions")
    for col in ("#", "version", "lever", "parent", "val score", "accepted?"):
        t.add_column(col)
    for v in state.ordered_versions():
        sc = v.score("val")
        acc = {"accepted": "yes", "rejected": "no", "candidate": "pending"}[v.status]
        if v.version_id == state.head:
            acc += " (head)"
        lever = v.lever + (f" ({recipes[v.version_id]})" if v.version_id in recipes else "")
        t.add_row(str(v.index), v.version_id[:12], lever, (v.parent or "-")[:12], "-" if sc is None else f"{sc:.3f}", acc)
    return t


@click.command()
@store_options
@click.option("--task", "task_name", required=True, help="Task to improve on (see `sia tasks`).")
@click.option("--model", "model_spec", default="smollm2", show_default=True, help="tiny | smollm2 | a local model folder | a cached hub id.")
@click.option("--openai-url", default=None, help="Use an OpenAI-compatible endpoint instead of a local model (scaffold lever only).")
@click.option("--openai-model", default=None, help="Model name at the endpoint.")
@click.option("--levers", type=click.Choice(["scaffold", "weights", "both"]), default=None, help="Levers to pull [default: both; scaffold for an endpoint].")
@click.option("--iterations", default=3, show_default=True, help="Improvement iterations (a budget: raise it to continue a run).")
@click.option("--seed", default=0, show_default=True)
@click.option("--branch", default="main", show_default=True)
@click.option("--feedback", type=click.Choice(["rule", "llm", "bandit"]), default="rule", show_default=True, help="Feedback Agent: deterministic rules; the model itself choosing among valid options by its own likelihood; or a bandit (UCB1) learning from this history which lever, recipe and kind of change pays per unit of cost.")
@click.option("--train-episodes", default=8, show_default=True)
@click.option("--val-episodes", default=8, show_default=True)
@click.option("--margin", default=0.0, show_default=True, help="A candidate must beat the head by more than this on val.")
@click.option("--samples", default=4, show_default=True, help="Outputs sampled per training episode (exploration for the weights lever).")
@click.option("--temperature", default=0.7, show_default=True, help="Sampling temperature of training rollouts (whatever the scaffold's decoding says).")
@click.option("--eval", "eval_mode", type=click.Choice(["greedy", "mean", "best"]), default="mean", show_default=True,
              help="Gate protocol on val: greedy, or the mean / best of --eval-samples samples per episode.")
@click.option("--eval-samples", default=4, show_default=True, help="Samples per val episode for --eval mean|best.")
@click.option("--eval-temperature", default=None, type=float, help="Temperature of val samples [default: the scaffold's decoding temperature].")
@click.option("--recipe", type=click.Choice(["auto", "sft", "rft", "grpo"]), default="auto", show_default=True,
              help="Training recipe of the weights lever (auto: the Feedback Agent chooses from the trajectories).")
@click.option("--lora-steps", default=8, show_default=True)
@click.option("--batch-rows", default=32, show_default=True, type=click.IntRange(min=0, max=4096),
              help="Model rows per generation batch (0: one request at a time, as runs recorded before batching did).")
@click.option("--lora-packing/--no-lora-packing", default=True, show_default=True,
              help="Pack a training batch's examples into one sequence (no padding); --no-lora-packing pads them, as runs before packing did.")
@click.option("--lora-r", default=8, show_default=True)
@click.option("--lora-lr", default=3e-4, show_default=True)
@weak_sandbox_option
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where a local model runs and trains (auto: CUDA when present; bf16 on a GPU).")
@click.option("--wall-time", default=None, type=float, help="Stop starting iterations after this many seconds.")
@click.option("--data", default=None, help="Data for tasks that take it (an .h5ad file for scrna-denoise).")
def run(store_path: str, as_json: bool, task_name: str, model_spec: str, openai_url: str | None, openai_model: str | None,
        levers: str | None, iterations: int, seed: int, branch: str, feedback: str, train_episodes: int, val_episodes: int,
        margin: float, samples: int, temperature: float, eval_mode: str, eval_samples: int, eval_temperature: float | None,
        recipe: str, lora_steps: int, batch_rows: int, lora_packing: bool, lora_r: int, lora_lr: float, device: str, wall_time: float | None, data: str | None) -> None:
    """Run (or resume) the improvement loop on a task; every step is recorded in the store.

    Re-running the same command on the same store resumes where it stopped.

    \b
    Example:
      sia run --task arith --model tiny --iterations 4 --store /tmp/arith
    """
    from sia_engine.loop.feedback.bandit import BanditPolicy
    from sia_engine.loop.feedback.model import LLMPolicy
    from sia_engine.loop.feedback.rule import RulePolicy
    from sia_engine.loop.loop import (
        EvalProtocol,
        LoopConfig,
        check_run,
        check_settings,
    )
    from sia_engine.loop.registry import get_task
    from sia_engine.loop.summary import summary_line
    from sia_engine.models.protocol import LoraSettings

    chosen = ("scaffold", "weights") if (levers or ("scaffold" if openai_url else "both")) == "both" else (levers or "scaffold",)
    try:  # every setting checked before a model loads or anything is recorded
        config = check_settings(LoopConfig(
            task=task_name, levers=chosen, seed=seed, train_episodes=train_episodes, val_episodes=val_episodes, margin=margin,  # type: ignore[arg-type]
            lora=LoraSettings(steps=lora_steps, r=lora_r, alpha=2 * lora_r, lr=lora_lr, packing=lora_packing), feedback=feedback,  # type: ignore[arg-type]
            iterations=iterations, wall_time_s=wall_time, samples=samples, temperature=temperature,
            eval=EvalProtocol(mode=eval_mode, samples=eval_samples, temperature=eval_temperature), recipe=recipe,  # type: ignore[arg-type]
            batch_rows=batch_rows,
        ))
    except SiaError as e:
        fail(str(e))
    task = get_task(task_name, data=data, protect=(str(Path(store_path).resolve()),))
    model = load_agent_model(model_spec, openai_url, openai_model, device, task)
    agent = LLMPolicy(model) if feedback == "llm" else BanditPolicy() if feedback == "bandit" else RulePolicy()
    try:  # before the store is created: a refused run leaves nothing behind
        config = check_run(config, task, model)
    except SiaError as e:
        fail(str(e))
    with Store.create(store_path) as s:
        require_verified(s, "sia run")
        state = _run_loop(s, task, model, agent, config, branch, quiet=as_json)
        summary = _summary(s, state, task, task_name, model.ref.id, branch)
    if as_json:
        emit_json(summary)
        return
    out.print(_versions_table(state, summary["recipes"]))
    out.print(summary_line(summary), highlight=False)
    out.print(f"head {str(state.head)[:12]} after {summary['iterations']} iteration(s), {summary['events']} events. "
              f"Audit it with: sia audit --store {store_path} (also sia log, sia verify)", highlight=False)


def _run_loop(s: Store, task: Task, model: Model, agent: FeedbackAgent, config: LoopConfig, branch: str, *, quiet: bool) -> AgentState:
    """The loop run (or resumed) on ``s`` behind a progress bar (none when ``quiet``); Ctrl-C exits 130."""
    from sia_engine.loop.loop import Loop

    with Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, disable=quiet) as bar:
        loop = Loop(s, task=task, model=model, feedback=agent, config=config, branch=branch, hooks=RichHooks(bar), engine_version=__version__)
        try:
            return loop.run()
        except KeyboardInterrupt:
            err.print(styled(("interrupted", "yellow"), ": everything recorded so far is kept; run the same command to resume"))
            sys.exit(130)


def _summary(s: Store, state: AgentState, task: Task, task_name: str, model_id: str, branch: str) -> dict[str, Any]:
    """What `sia run` reports (all of it with --json): the store, the versions, the scores, the recipes."""
    from sia_engine.loop.summary import run_summary

    return {
        "store": str(s.root.resolve()), "branch": branch, "task": task_name, "model": model_id,
        "iterations": state.iteration + 1, "events": s.log.count(), "head": state.head,
        "versions": [{"version": v.version_id, "lever": v.lever, "val_score": v.score("val"), "status": v.status} for v in state.ordered_versions()],
        **run_summary(state, task),
        "recipes": project(s.log, branch, RecipeByVersion())[0],
    }


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def tasks(as_json: bool) -> None:
    """List the tasks `sia run` can improve on, with what data they need.

    \b
    Example:
      sia tasks --json
    """
    from sia_engine.loop.registry import task_info

    rows = [{k: r[k] for k in ("name", "description", "data")} for r in task_info()]
    if as_json:
        emit_json(rows)
        return
    t = Table(title="tasks")
    for col in ("name", "description", "data"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["description"], r["data"])
    out.print(t)
