"""What recorded replay recomputes without the task or the blobs: the reducer, each evaluation's
score from its outputs under the recorded protocol, and each gate decision (``reduce_and_gate``);
and the helpers the full replay shares (``differs``, ``environment_notes``)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from replay.stand_ins import ReplayDivergence
from sia_engine.domain.events import (
    RunStarted,
    TrajectoryRecorded,
    VersionAccepted,
    VersionEvaluated,
    VersionRejected,
)
from sia_engine.domain.projection import Recorded
from sia_engine.domain.state import AgentState, apply, state_hash
from sia_engine.errors import ReducerError
from sia_engine.loop.loop import evaluation_score, gate_accepts
from sia_engine.loop.pins import environment, environment_differences
from sia_engine.models.protocol import Model

__all__ = ["ReplayReport", "TOLERANCE", "differs", "reduce_and_gate", "check_gate", "environment_notes"]

TOLERANCE = 1e-9


class ReplayReport(msgspec.Struct, frozen=True):
    branch: str
    n_events: int
    rescored: int  # outputs re-scored by the task's own scorer
    evaluations: int  # evaluations recomputed by the loop
    verdicts: int  # Feedback Agent verdicts recomputed (rule, model or later policy)
    decisions: int  # gate decisions recomputed
    state_hash: str
    skipped: tuple[str, ...] = ()  # what could not be recomputed, and why
    choices: int = 0  # of the verdicts, a model's constrained choices
    patches: int = 0  # scaffold patches recomputed from their verdicts
    adapters: int = 0  # adapter checkpoints recomputed from their plans (data, recipe, seed, settings)
    rederived: int = 0  # of them, trained again and identical byte for byte (``retrain``)
    adapter_seconds: tuple[float, ...] = ()  # time to train each one again
    outputs: int = 0  # recorded outputs the loop's steps asked for and recorded again
    baselines: int = 0  # an experiment's baselines recomputed
    data: str = ""  # the task's data against the run's pin: "as recorded", "not pinned", or "" (no task here)
    environment: tuple[str, ...] = ()  # how the software here differs from the recorded (empty: the same, or not recorded)
    unfinished: str = ""  # the branch ends inside a step: what was left unrecomputed


def differs(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is not b
    return abs(a - b) > TOLERANCE


def reduce_and_gate(branch: str, recs: Sequence[Recorded], why: str) -> ReplayReport:
    """What needs neither the task nor the blobs: the reducer, evaluation scores, gate decisions."""
    state = AgentState()
    val: list[TrajectoryRecorded] = []
    counts = {"evaluations": 0, "decisions": 0}
    unchecked = {"evaluations": 0, "decisions": 0}
    for rec in recs:
        e = rec.event
        if isinstance(e, TrajectoryRecorded) and e.split != "train":
            val.append(e)
        elif isinstance(e, VersionEvaluated):
            mine, val = [t for t in val if t.version_id == e.version_id], []
            if mine:
                again = evaluation_score(mine, str(e.protocol.get("mode", "mean")))[0]
                if differs(again, e.score):
                    raise ReplayDivergence(rec.where, "evaluation score", again, e.score)
                counts["evaluations"] += 1
            else:
                unchecked["evaluations"] += 1
        elif isinstance(e, (VersionAccepted, VersionRejected)):
            if check_gate(rec.where, state, e):
                counts["decisions"] += 1
            else:
                unchecked["decisions"] += 1
        state = _apply(rec, state)
    env = environment_notes(recs[0].event, None) if recs and isinstance(recs[0].event, RunStarted) else ()
    said = [why] + [f"{n} {k} could not be recomputed (no outputs, or no score to gate on, in the log)" for k, n in unchecked.items() if n]
    return ReplayReport(branch, len(recs), 0, counts["evaluations"], 0, counts["decisions"], state_hash(state), skipped=tuple(said), environment=env)


def environment_notes(e: RunStarted, model: Model | None) -> tuple[str, ...]:
    """How the software here differs from the run's (the device only when a model is at hand)."""
    if e.environment is None:
        return ("the run recorded no environment (run_started schema 1)",)
    return tuple(environment_differences(e.environment, environment(model)))


def check_gate(where: str, state: AgentState, e: VersionAccepted | VersionRejected) -> bool:
    """The gate applied again to a recorded decision; False where the log holds no score to gate on."""
    head, cand = state.head_version, state.versions.get(e.version_id)
    score = cand.score("val") if cand else None
    if score is None:
        return False
    margin = (state.run.config if state.run else {}).get("margin", 0.0)
    if not isinstance(margin, (int, float)) or isinstance(margin, bool):
        raise ReplayDivergence(where, "margin", "a number", margin)
    accept = gate_accepts(score, head.score("val") if head else None, float(margin))
    if accept != isinstance(e, VersionAccepted):
        word = {True: "accepted", False: "rejected"}
        raise ReplayDivergence(where, "gate decision", word[accept], word[isinstance(e, VersionAccepted)])
    return True


def _apply(rec: Recorded, state: AgentState) -> AgentState:
    try:
        return apply(state, rec.event)
    except ReducerError as err:
        raise ReplayDivergence(rec.where, "reducer", "an event consistent with the history", str(err)) from None
