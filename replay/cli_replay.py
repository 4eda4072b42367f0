"""``sia replay``: a branch replayed through the loop's own steps against its recorded outputs
(``--retrain``: every adapter trained again), or its model calls re-executed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
import msgspec

from replay.cli import task_or_none
from sia_engine.cli.api import emit_json, fail, open_store, out, store_options, styled

if TYPE_CHECKING:
    from sia_engine.loop.task import Task
    from sia_engine.models.protocol import Model
    from store import Store

__all__ = ["replay"]


@click.command()
@store_options
@click.argument("branch")
@click.option("--mode", type=click.Choice(["recorded", "reexecute"]), default="recorded", show_default=True,
              help="recorded: recompute from recorded outputs; reexecute: re-run the recorded model calls.")
@click.option("--data", default=None, help="The task's data, for tasks that take it (as given to sia run).")
@click.option("--model", "model_spec", default=None, help="reexecute, --retrain: the base model (tiny | smollm2 | a folder) [default: the run's].")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="reexecute: at most this many recorded outputs.")
@click.option("--retrain", is_flag=True, help="recorded: train every adapter again from its recorded data, seed and settings; each must come out byte for byte.")
def replay(store_path: str, as_json: bool, branch: str, mode: str, data: str | None, model_spec: str | None, limit: int | None,
           retrain: bool) -> None:
    """Replay a branch: run the loop against its recorded outputs, or re-execute its model calls.

    recorded: the loop's own steps run against the recorded outputs and scores, and every event
    they would record is compared with the log (verdicts, patches, adapters' data and settings,
    evaluations, gate decisions); every output is re-scored with the task's scorer; exit 1 at the
    first divergence. --retrain also trains every adapter again (with --model, or the run's
    preset) and compares the blobs. reexecute: rebuild each version and re-run its recorded
    generations; prints the share identical.

    \b
    Example:
      sia replay main --mode recorded
      sia replay main --retrain
      sia replay main --mode reexecute --limit 50
    """
    from replay.rebuild import state_at
    from replay.reexecute import load_base_model, software_differences

    if retrain and mode != "recorded":
        fail("--retrain is a recorded replay's: drop --mode reexecute")
    with open_store(store_path, read_only=True) as s:
        state = state_at(s.log, branch)
        if state.run is None:
            fail(f"branch {branch!r} holds no run")
        assert state.run is not None
        model = load_base_model(state.run.base_model, model_spec) if retrain or mode == "reexecute" else None
        notes = software_differences(s, branch, model) if model is not None else []
        if notes and not as_json:  # said before anything runs
            out.print(styled(("software differs", "yellow"), ": " + "; ".join(notes) + " (bit-identity is promised only on the same)"))
        if mode == "recorded":
            data_out = msgspec.to_builtins(_replay_recorded(s, branch, task_or_none(state.run.task, data), as_json, model))
        else:
            assert model is not None
            from replay.reexecute import reexecute

            report = reexecute(s, branch, model, limit=limit)
            data_out = {**msgspec.to_builtins(report), "share_identical": report.share_identical}
    if as_json:
        emit_json({"ok": True, **data_out, "software_differs": notes})
    elif mode == "recorded":
        _print_replay(branch, data_out)
    else:
        out.print(f"{data_out['identical']} of {data_out['outputs']} outputs identical ({data_out['share_identical']:.1%})", highlight=False)
        if data_out["first_divergence"]:
            out.print(_divergence_line(data_out["first_divergence"]), highlight=False, markup=False)


def _print_replay(branch: str, d: dict[str, Any]) -> None:
    """A recorded replay's report in words: what was proven first."""
    adapters = f", adapters re-derived: {d['rederived']} of {d['adapters']}" if d["adapter_seconds"] or d["rederived"] else ""
    if d["adapter_seconds"]:
        adapters += f" ({sum(d['adapter_seconds']) / len(d['adapter_seconds']):.1f} s per adapter)"
    out.print(styled(("REPLAYS", "green"), f": {d['n_events']} events of {branch}; {d['outputs']} outputs replayed and {d['rescored']} re-scored, "
              f"{d['verdicts']} verdicts ({d['choices']} model choices), {d['patches']} patches, {d['adapters']} adapters' plans, "
              f"{d['evaluations']} evaluations, {d['decisions']} gate decisions and {d['baselines']} baselines recomputed, all as recorded"
              f"{adapters}; data {d['data'] or 'not checked'}; state {d['state_hash'][:16]}"), highlight=False)
    for why in (*d["skipped"], *([d["unfinished"]] if d["unfinished"] else [])):
        out.print(styled(("not recomputed", "yellow"), f": {why}"), highlight=False)


def _replay_recorded(s: Store, branch: str, task: Task | None, as_json: bool, retrain: Model | None) -> object:
    """``replay_recorded``'s report; at a divergence, say where and exit 1."""
    from replay.recorded import AdapterDiffers, ReplayDivergence, replay_recorded

    try:
        return replay_recorded(s, branch, task, retrain=retrain)
    except ReplayDivergence as e:
        if as_json:
            emit_json({"ok": False, "seq": e.seq, "field": e.field, "expected": e.expected, "got": e.got,
                       **({"adapter": e.version, "tensor": e.tensor} if isinstance(e, AdapterDiffers) else {})})
        else:
            out.print(styled(("DIVERGES", "bold red"), f": {e}"), soft_wrap=True, highlight=False)
        raise SystemExit(1) from None


def _divergence_line(d: dict[str, Any]) -> str:
    """Re-execution's first divergence in words: a generated output (one sample of a request), or
    a model Feedback Agent's option scores (a ``feedback-score`` action, which has no sample)."""
    if "sample" in d:
        return f"first divergence at {d['at']} (sample {d['sample']}): recorded {d['recorded']!r}, re-executed {d['reexecuted']!r}"
    named = "".join(f", {k} {d[k]}" for k in ("action", "stage") if k in d)
    return (f"first divergence at {d['at']} (feedback-score action{named}: the model Feedback Agent's option scores under version "
            f"{str(d.get('version', '-'))[:12]}): recorded scores {d['recorded']!r}, recomputed {d['reexecuted']!r}")
