"""``sia experiment``: scaffold-only vs weights-only vs both, as forks of one history."""

from __future__ import annotations

import functools

from pathlib import Path
from typing import TYPE_CHECKING, Any

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

from sia_engine.cli.api import (
    emit_json,
    err,
    fail,
    load_agent_model,
    out,
    require_verified,
    store_options,
    weak_sandbox_option,
)
from sia_engine.errors import SiaError
from store import Store

if TYPE_CHECKING:
    from sia_engine.experiment.table import ExperimentResult


@click.command()
@store_options
@click.option("--task", "task_name", required=True, help="Task name (see `sia tasks`).")
@click.option("--model", "model_spec", default="smollm2", show_default=True, help="tiny | smollm2 | a local folder.")
@click.option("--openai-url", default=None, help="An OpenAI-compatible endpoint instead of a local model (the scaffold arm only).")
@click.option("--openai-model", default=None, help="Model name at the endpoint.")
@click.option("--arms", default="scaffold,weights,both", show_default=True, help="Comma-separated arms: scaffold, weights, both (the rule policy), both-bandit (both levers, chosen by --feedback bandit).")
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(min=1, max=20), help="Seeds per arm (0 .. N-1).")
@click.option("--iterations", default=3, show_default=True, type=click.IntRange(min=1, max=1000), help="Iterations per arm and seed.")
@click.option("--name", default="exp", show_default=True, help="The experiment's name: its branches are NAME-base and NAME-ARM-sSEED.")
@click.option("--train-episodes", default=8, show_default=True)
@click.option("--val-episodes", default=4, show_default=True)
@click.option("--samples", default=4, show_default=True)
@click.option("--temperature", default=0.7, show_default=True)
@click.option("--eval", "eval_mode", type=click.Choice(["greedy", "mean", "best"]), default="mean", show_default=True)
@click.option("--lora-steps", default=8, show_default=True)
@click.option("--batch-rows", default=32, show_default=True, type=click.IntRange(min=0, max=4096),
              help="Model rows per generation batch (0: one request at a time).")
@click.option("--budget", default=None, help="Per arm: calls=N (model calls), steps=N (LoRA steps), wall=SECONDS; an arm stops starting iterations once one is spent.")
@weak_sandbox_option
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--data", default=None, help="Data for tasks that take it.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: the arms one after another here; ray: each arm a Ray task on a worker with its own store (pip install 'sia-engine[ray]').")
@click.option("--ray-address", default=None, help="ray: a running cluster's address (default: start one on this machine).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1, max=1024), help="ray: arms running at once.")
@click.option("--worker-threads", default=1, show_default=True, type=click.IntRange(min=1, max=256), help="ray: CPUs (and torch threads) per arm.")
@click.option("--stall-timeout", default=None, type=click.FloatRange(min=1), help="ray: seconds an arm may send nothing before its worker is taken for hung and the arm resumed elsewhere (default: wait); give more than an iteration takes.")
def experiment(store_path: str, as_json: bool, task_name: str, model_spec: str, openai_url: str | None, openai_model: str | None, arms: str, seeds: int, iterations: int, name: str,
               train_episodes: int, val_episodes: int, samples: int, temperature: float, eval_mode: str, lora_steps: int, batch_rows: int,
               budget: str | None, device: str, data: str | None, executor: str, ray_address: str | None, workers: int,
               worker_threads: int, stall_timeout: float | None) -> None:
    """Run (or resume) an experiment: one shared, evaluated prefix forked into one branch per arm
    and seed, each improved for the same iterations (and budget), each head then scored once on
    the test split; then the baselines (the base version, best-of-k sampling of it and uniform
    random search with the arms' evaluation budget, the task's reference methods) on the prefix.

    \b
    Everything printed is computed from the log: `sia experiment` again on the same store resumes
    and reprints it; `sia audit` plots it.

    \b
    Example:
      sia experiment --task arith --model tiny --arms scaffold,both --seeds 2 --iterations 2 --store /tmp/exp
      sia experiment --task arith --model tiny --executor ray --workers 2 --store /tmp/exp-ray
    """
    from sia_engine.experiment.arms import parse_budget, run_experiment
    from sia_engine.loop.feedback.rule import RulePolicy
    from sia_engine.loop.loop import EvalProtocol, LoopConfig, check_settings
    from sia_engine.loop.registry import get_task
    from sia_engine.models.protocol import LoraSettings

    chosen = tuple(a.strip() for a in arms.split(",") if a.strip())
    try:
        config = check_settings(LoopConfig(task=task_name, iterations=0, train_episodes=train_episodes, val_episodes=val_episodes,
                                           samples=samples, temperature=temperature, eval=EvalProtocol(mode=eval_mode),  # type: ignore[arg-type]
                                           lora=LoraSettings(steps=lora_steps), batch_rows=batch_rows))
        limits = None if budget is None else parse_budget(budget)
    except SiaError as e:
        fail(str(e))
    task = get_task(task_name, data=data, protect=(str(Path(store_path).resolve()),))
    model = load_agent_model(model_spec, openai_url, openai_model, device, task)
    from sia_engine.cli.progress import RichHooks

    runner = None
    if executor == "ray":
        from sia_engine.experiment.on_ray import RayExecutor

        try:
            import ray  # noqa: F401
        except ImportError:
            fail("--executor ray needs Ray: pip install 'sia-engine[ray]'")
        protect = (str(Path(store_path).resolve()),)
        make = functools.partial(worker_setup, task_name, data, protect, model_spec, openai_url, openai_model, device)
        runner = RayExecutor(make, address=ray_address, workers=workers, threads=worker_threads, stall_s=stall_timeout)
    with Store.create(store_path) as s:
        require_verified(s, "sia experiment")
        with Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, disable=as_json) as bar:
            result = run_experiment(s, task=task, model=model, feedback=RulePolicy, config=config, name=name, arms=chosen,
                                    seeds=tuple(range(seeds)), iterations=iterations, budget=limits, hooks=RichHooks(bar),
                                    executor=runner)
    if as_json:
        emit_json(result_json(result))
        return
    print_result(result, task_name)


def worker_setup(task_name: str, data: str | None, protect: tuple[str, ...], model_spec: str, openai_url: str | None,
                 openai_model: str | None, device: str) -> tuple[Any, Any, Any]:
    """What a Ray worker builds for an arm: the task, the model and the Feedback Agent's factory
    (pickled by reference: the worker imports this module)."""
    from sia_engine.loop.feedback.rule import RulePolicy
    from sia_engine.loop.registry import get_task

    task = get_task(task_name, data=data, protect=protect)
    return task, load_agent_model(model_spec, openai_url, openai_model, device, task), RulePolicy


def result_json(result: ExperimentResult) -> dict[str, Any]:
    from sia_engine.experiment.table import arm_summary, comparisons

    return {
        "experiment": result.name,
        "arms": [msgspec.to_builtins(r) for r in result.arms],
        "baselines": [{**msgspec.to_builtins(b), "mean": b.mean} for b in result.baselines],
        "base_version": {"val": result.base_val, "test": result.base_test},
        "summary": arm_summary(result),
        "comparisons": {key: None if c is None else {**msgspec.to_builtins(c), "excludes_zero": c.excludes_zero}
                        for key, c in comparisons(result).items()},
    }


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def summary_lines(arm: str, m: dict[str, Any]) -> list[str]:
    """An arm's summary, like with like: its policy against the base policy, its best artifact
    against the searches' best."""
    lines = []
    if (p := m.get("policy")) is not None:
        base = "" if p["beats_base"] is None else ("; beats the base version's policy" if p["beats_base"] else "; does NOT beat the base version's policy")
        lines.append(f"{arm}, policy: mean test {p['mean']:.3f} (sd {p['sd']:.3f}, {p['seeds']} seeds){base}")
    if (a := m.get("artifact")) is not None:
        vs = "; ".join(("beats " if ok else "does NOT beat ") + method for method, ok in a["beats"].items())
        lines.append(f"{arm}, best artifact: mean test {a['mean']:.3f} (sd {a['sd']:.3f}, {a['seeds']} seeds){'; ' + vs if vs else ''}")
    return lines


def print_result(result: ExperimentResult, task_name: str) -> None:
    from sia_engine.experiment.table import arm_summary, comparisons

    t = Table(title=f"experiment {result.name} on {task_name}: arms on the test split, two measures "
                    "(policy: the head's mean sampled proposal; artifact: the best answer the arm scored, chosen on val)")
    for col in ("arm", "seed", "policy test", "policy val", "artifact test", "artifact val", "answers scored", "iterations", "levers used",
                "candidates", "accepted", "model calls", "train steps", "wall s"):
        t.add_column(col)
    for r in result.arms:
        t.add_row(r.arm, str(r.seed), *(_f(v) for v in (r.test_score, r.val_score, r.artifact_test, r.artifact_val)),
                  f"{r.scored} ({r.artifact_candidates} distinct)", f"{r.iterations}{' (budget: ' + r.stopped + ')' if r.stopped else ''}",
                  ",".join(r.levers_used) or "-", str(r.candidates), str(r.accepted), str(r.model_calls), str(r.train_steps), f"{r.wall_s:.0f}")
    wide = out if out.is_terminal else Console(width=170, markup=False)  # printed to a file or a pipe, the wide tables stay whole
    wide.print(t)
    b = Table(title="baselines (test split; the searches' best, chosen on val: compare with the arms' artifact)")
    for col in ("baseline", "test per seed", "mean", "evaluations", "model calls", "how"):
        b.add_column(col)
    b.add_row("base version", "-" if result.base_test is None else f"{result.base_test:.3f}",
              "-" if result.base_test is None else f"{result.base_test:.3f}", "-", "-", "the version every arm starts from")
    for x in result.baselines:
        b.add_row(x.method, ", ".join(f"{v:.3f}" for v in x.test_scores), f"{x.mean:.3f}", str(x.evaluations), str(x.model_calls), x.note)
    wide.print(b)
    for arm, m in arm_summary(result).items():
        for line in summary_lines(arm, m):
            out.print(line, highlight=False)
    for comparison in comparisons(result).values():
        if comparison is not None:
            out.print(comparison.describe(), highlight=False)
    if not any(x.method == "random-search" for x in result.baselines):
        out.print(f"random search: {task_name} cannot draw random answers", highlight=False)
