"""``sia experiment``: scaffold-only vs weights-only vs both, as forks of one history."""

from __future__ import annotations

import statistics
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from sia_engine.cli_common import _fail, emit_json, err, out, store_options
from sia_engine.errors import SiaError
from store import Store


@click.command()
@store_options
@click.option("--task", "task_name", required=True, help="Task name (see `sia tasks`).")
@click.option("--model", "model_spec", default="smollm2", show_default=True, help="tiny | smollm2 | a local folder.")
@click.option("--arms", default="scaffold,weights,both", show_default=True, help="Comma-separated arms: scaffold, weights, both.")
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(min=1, max=20), help="Seeds per arm (0 .. N-1).")
@click.option("--iterations", default=3, show_default=True, type=click.IntRange(min=1, max=1000), help="Iterations per arm and seed.")
@click.option("--name", default="exp", show_default=True, help="The experiment's name: its branches are NAME-base and NAME-ARM-sSEED.")
@click.option("--train-episodes", default=8, show_default=True)
@click.option("--val-episodes", default=4, show_default=True)
@click.option("--samples", default=4, show_default=True)
@click.option("--temperature", default=0.7, show_default=True)
@click.option("--eval", "eval_mode", type=click.Choice(["greedy", "mean", "best"]), default="mean", show_default=True)
@click.option("--lora-steps", default=8, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--data", default=None, help="Data for tasks that take it.")
def experiment(store_path: str, as_json: bool, task_name: str, model_spec: str, arms: str, seeds: int, iterations: int, name: str,
               train_episodes: int, val_episodes: int, samples: int, temperature: float, eval_mode: str, lora_steps: int,
               device: str, data: str | None) -> None:
    """Run (or resume) an experiment: one shared, evaluated prefix forked into one branch per arm
    and seed, each improved for the same iterations, each head then scored once on the test split.

    The table is computed from the log (`sia experiment` again on the same store resumes and
    reprints it). Not yet included: the random-search and best-of-k baselines.

    \b
    Example:
      sia experiment --task arith --model tiny --arms scaffold,both --seeds 2 --iterations 2 --store /tmp/exp
    """
    from sia_engine.experiment import base_test_score, paired, random_search, run_experiment
    from sia_engine.feedback import RulePolicy
    from sia_engine.loop import EvalProtocol, LoopConfig, check_settings
    from sia_engine.model import LoraSettings
    from sia_engine.presets import load_model
    from sia_engine.registry import get_task

    chosen = tuple(a.strip() for a in arms.split(",") if a.strip())
    try:
        config = check_settings(LoopConfig(task=task_name, iterations=0, train_episodes=train_episodes, val_episodes=val_episodes,
                                           samples=samples, temperature=temperature, eval=EvalProtocol(mode=eval_mode),  # type: ignore[arg-type]
                                           lora=LoraSettings(steps=lora_steps)))
    except SiaError as e:
        _fail(str(e))
    task = get_task(task_name, data=data, protect=(str(Path(store_path).resolve()),))
    err.print(f"loading model {model_spec} ...", highlight=False)
    try:
        model = load_model(model_spec, device=device)
    except ValueError as e:
        _fail(str(e))
    from sia_engine.cli_run import _RichHooks

    with Store.create(store_path) as s:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, disable=as_json) as bar:
            table = run_experiment(s, task=task, model=model, feedback=RulePolicy, config=config, name=name, arms=chosen,
                                   seeds=tuple(range(seeds)), iterations=iterations, hooks=_RichHooks(bar))
        base_test = base_test_score(s, name)
    k = max((r.candidates + 1 for r in table), default=1)  # versions an arm evaluated: its candidates and the base
    search = random_search(task, k=k, val_episodes=val_episodes, seeds=tuple(range(seeds)))
    rows = [{f: getattr(r, f) for f in r.__struct_fields__} for r in table]
    comparison = paired(table, "both", "scaffold")
    baselines = {"base_test": base_test,
                 "random_search": None if search is None else {"test_scores": list(search.test_scores), "mean": search.mean,
                                                               "evaluations": search.evaluations, "note": search.note}}
    if as_json:
        emit_json({"arms": rows, "baselines": baselines,
                   "both_vs_scaffold": None if comparison is None else {**{f: getattr(comparison, f) for f in comparison.__struct_fields__},
                                                                         "excludes_zero": comparison.excludes_zero}})
        return
    t = Table(title=f"experiment {name} on {task_name} (test split, scored once per head)")
    for col in ("arm", "seed", "test", "val", "iterations", "levers used", "candidates", "accepted", "model calls", "train steps", "wall s"):
        t.add_column(col)
    for r in table:
        t.add_row(r.arm, str(r.seed), "-" if r.test_score is None else f"{r.test_score:.3f}", "-" if r.val_score is None else f"{r.val_score:.3f}",
                  str(r.iterations), ",".join(r.levers_used) or "-", str(r.candidates), str(r.accepted), str(r.model_calls), str(r.train_steps),
                  f"{r.wall_s:.0f}")
    out.print(t)
    for arm in dict.fromkeys(r.arm for r in table):
        scores = [r.test_score for r in table if r.arm == arm and r.test_score is not None]
        if scores:
            spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
            beat = "" if search is None else (" - beats random search" if statistics.fmean(scores) > search.mean else " - does NOT beat random search")
            out.print(f"{arm}: mean test {statistics.fmean(scores):.3f} (sd {spread:.3f}, {len(scores)} seeds){beat}", highlight=False)
    out.print(f"base version: test {'-' if base_test is None else f'{base_test:.3f}'}", highlight=False)
    if comparison is not None:
        ci = "" if comparison.low is None else f", 95% interval [{comparison.low:+.3f}, {comparison.high:+.3f}]"
        verdict = ("both is better" if comparison.low is not None and comparison.low > 0 else "both is worse" if comparison.excludes_zero
                   else "no difference shown")
        out.print(f"both vs scaffold, seed by seed: differences {', '.join(f'{x:+.3f}' for x in comparison.differences)}; "
                  f"mean {comparison.mean:+.3f}{ci}: {verdict}", highlight=False)
    if search is None:
        out.print(f"random search: {task_name} cannot draw random answers", highlight=False)
    else:
        out.print(f"random search ({search.note}, {search.evaluations} val scorings per seed): mean test {search.mean:.3f}", highlight=False)
