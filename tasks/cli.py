"""The tasks' own commands of ``sia`` (registered as ``sia_engine.commands`` entry points):
``sia baseline`` (a reference method's scores) and ``sia score`` (published-format predictions)."""

from __future__ import annotations

from typing import TypedDict

import click
import msgspec
from rich.table import Table

from sia_engine.cli.api import emit_json, err, fail, out, styled
from sia_engine.errors import SiaError

__all__ = ["baseline", "score"]


class ScoreRow(TypedDict):
    """One prediction file's scores, as ``sia score`` prints them."""

    task: str
    model: str
    score: float
    abstention_rate: float
    simplified: bool


@click.command()
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
        fail(str(e))
    split = mcv_split(counts, seed)
    denoised = split.test.astype(float) if method == "perfect" else BASELINES[method](split.train, seed=seed)
    scores = evaluate(split, denoised, control_scores(split))
    result = {"task": task_name, "data": data or DEFAULT_DATA, "method": method, "seed": seed,
              "cells": int(split.train.shape[0]), "genes": int(split.train.shape[1]), **msgspec.to_builtins(scores)}
    if as_json:
        emit_json(result)
        return
    t = Table(title=f"{task_name}: {method} (split seed {seed})")
    for col in ("metric", "raw", "normalised"):
        t.add_column(col)
    t.add_row("MSE (log-normalised)", f"{scores.mse:.5f}", f"{scores.mse_normalized:.4f}")
    t.add_row("Poisson (official)", f"{scores.poisson:.5f}", f"{scores.poisson_normalized:.4f}")
    t.add_row("score (mean)", "", f"{scores.score:.4f}")
    out.print(t)


@click.command()
@click.argument("benchmark", type=click.Choice(["lawbench"]))
@click.argument("predictions", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def score(benchmark: str, predictions: str, as_json: bool) -> None:
    """Score published-format prediction files (one folder per model, <task>.json inside).

    \b
    Example:
      sia score lawbench ../shared/data/lawbench/predictions/zero_shot --json
    """
    from tasks.lawbench import load_predictions, prediction_sets, score_file

    rows: list[ScoreRow] = []
    try:
        for model, files in prediction_sets(predictions).items():
            for task, path in sorted(files.items(), key=lambda kv: [int(x) for x in kv[0].split("-")]):
                try:
                    result = score_file(task, load_predictions(path))
                except KeyError:
                    err.print(styled((f"skipped {path}: no LawBench task {task!r}", "yellow")))
                    continue
                rows.append({"task": task, "model": model, "score": result["score"],
                             "abstention_rate": result["abstention_rate"], "simplified": bool(result["simplified"])})
    except SiaError as e:
        fail(str(e))
    if not rows:
        fail(f"no LawBench prediction files (<task>.json) under {predictions}")
    if as_json:
        emit_json(rows)
        return
    t = Table(title=f"{benchmark}: {predictions}")
    for col in ("model", "task", "score", "abstention", "note"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["model"], r["task"], f"{r['score']:.4f}", f"{r['abstention_rate']:.3f}", "simplified scorer" if r["simplified"] else "")
    out.print(t)
