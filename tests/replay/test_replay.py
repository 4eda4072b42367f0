"""`sia replay`: recorded (recompute from recorded outputs) and re-execute (re-run model calls)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from replay.recorded import ReplayDivergence, replay_recorded
from replay.reexecute import reexecute
from sia_engine.cli.main import main
from sia_engine.domain.events import (
    TrajectoryRecorded,
    VersionAccepted,
    VersionRejected,
    decode_envelope,
    encode,
)
from sia_engine.domain.integrity import verify_store
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.models.presets import tiny_model
from sia_engine.models.protocol import LoraSettings
from store import BlobStore, MemoryEventLog, Store
from tests.loop_helpers import TASK, format_then_content_errors, scripted


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "store"
    with Store.create(path) as s:
        cfg = LoopConfig(task="arith", iterations=3, train_episodes=6, val_episodes=6, samples=2)
        Loop(s, task=TASK, model=scripted(format_then_content_errors), feedback=RulePolicy(), config=cfg).run()
    return path


def rewritten(path: Path, change) -> Store:  # type: ignore[no-untyped-def]
    """The branch re-recorded into a fresh log with one event changed and every hash recomputed."""
    log = MemoryEventLog()
    log.init_branch("main")
    with Store.open(path, read_only=True) as s:
        events = [decode_envelope(e) for e in s.log.read("main")]
        blobs = BlobStore(path / "blobs")
    done = False
    for e in events:
        if not done:
            new = change(e)
            done = new is not e
            e = new
        log.append("main", [encode(e)], expected_head=log.branch("main").head_id)
    assert done
    return Store(path, log, blobs)


def test_recorded_replay_recomputes_the_run(recorded: Path) -> None:
    with Store.open(recorded, read_only=True) as s:
        report = replay_recorded(s, "main", TASK)
        n = s.log.count()
    assert report.n_events == n and report.rescored > 0 and report.verdicts == 3 and report.decisions >= 2 and report.evaluations >= 3
    r = CliRunner().invoke(main, ["replay", "main", "--store", str(recorded), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["ok"] is True


def test_a_rewritten_score_is_caught_though_every_hash_is_recomputed(recorded: Path) -> None:
    def bump(e):  # type: ignore[no-untyped-def]
        if isinstance(e, TrajectoryRecorded) and e.split == "train" and e.score == 0.0:
            return msgspec.structs.replace(e, score=1.0)
        return e

    s = rewritten(recorded, bump)
    assert verify_store(s.log).ok  # the hashes hold
    with pytest.raises(ReplayDivergence) as exc:
        replay_recorded(s, "main", TASK)
    assert exc.value.field == "score" and exc.value.expected == 0.0 and exc.value.got == 1.0


def test_a_rewritten_gate_decision_is_caught(recorded: Path) -> None:
    def accept(e):  # type: ignore[no-untyped-def]
        if isinstance(e, VersionRejected):
            return VersionAccepted(version_id=e.version_id, previous=e.head, score=e.score or 0.0, previous_score=e.head_score, margin=0.0)
        return e

    with pytest.raises(ReplayDivergence) as exc:
        replay_recorded(rewritten(recorded, accept), "main", TASK)
    assert exc.value.field == "gate decision" and (exc.value.expected, exc.value.got) == ("rejected", "accepted")


def test_without_the_task_it_says_what_it_skipped(recorded: Path) -> None:
    with Store.open(recorded, read_only=True) as s:
        report = replay_recorded(s, "main", None)
    assert report.rescored == 0 and report.verdicts == 0 and report.decisions >= 2
    assert report.skipped == ("verdicts, patches, adapters' plans and scores: the task is not available here",)


def test_reexecution_with_the_tiny_model_reproduces_every_output(tmp_path: Path) -> None:
    with Store.create(tmp_path) as s:
        cfg = LoopConfig(task="arith", iterations=2, train_episodes=3, val_episodes=2, samples=2, levers=("weights",),
                         lora=LoraSettings(steps=2, lr=1e-2))
        Loop(s, task=TASK, model=tiny_model(), feedback=RulePolicy(), config=cfg).run()
        report = reexecute(s, "main", tiny_model())
    assert report.outputs > 10 and report.identical == report.outputs and report.first_divergence is None
    r = CliRunner().invoke(main, ["replay", "main", "--mode", "reexecute", "--store", str(tmp_path), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["share_identical"] == 1.0


def test_reexecution_names_the_first_divergence(tmp_path: Path) -> None:
    with Store.create(tmp_path) as s:
        cfg = LoopConfig(task="arith", iterations=1, train_episodes=3, val_episodes=2, samples=2, levers=("scaffold",))
        Loop(s, task=TASK, model=tiny_model(), feedback=RulePolicy(), config=cfg).run()
        report = reexecute(s, "main", tiny_model(seed=1))  # other weights: other outputs
    assert report.identical < report.outputs and report.first_divergence is not None
    assert set(report.first_divergence) == {"at", "version", "sample", "recorded", "reexecuted"}


def test_a_rescore_that_timed_out_where_the_log_scored_it_runs_once_more_alone() -> None:
    """Replay re-scores side by side; a sandboxed run may time out on a busy machine where the
    recorded run did not. Such an output is scored again, alone, in a cache scope of its own; an
    output whose recorded run timed out as well is not run twice."""
    from replay.recorded import _prescore
    from sia_engine.domain.events import TrajectoryRecorded
    from sia_engine.domain.payloads import ToolCall
    from sia_engine.loop.task import Episode, Score

    class Busy:
        name = "busy"
        concurrent_scoring = True

        def __init__(self) -> None:
            self.cache: dict[str, Score] = {}
            self.runs: list[str] = []
            self.scopes: list[str] = []

        def cache_scope(self, scope: str) -> None:
            self.scopes.append(scope)
            self.cache = {}

        def score(self, episode: Episode, output: str) -> Score:
            if output in self.cache:
                return self.cache[output]
            self.runs.append(output)
            timed_out = output == "always" or self.runs.count(output) == 1  # the first run of each meets a busy machine
            status = "timeout" if timed_out else "ok"
            s = Score(0.0 if timed_out else 0.7, "content", {}, (ToolCall(name="sandbox", inputs={}, outputs={"status": status}),))
            self.cache[output] = s
            return s

    ep = Episode("e1", "val", "x")
    trajs = [TrajectoryRecorded(trajectory_id=f"t{i}", episode_id="e1", split="val", version_id="0" * 64, output=o, score=sc)
             for i, (o, sc) in enumerate([("fine", 0.7), ("always", 0.0), ("fine2", 0.7)])]
    task = Busy()
    scores = _prescore(task, {"e1": ep}, trajs)  # type: ignore[arg-type]
    assert scores[("e1", "fine")].score == 0.7 and scores[("e1", "fine2")].score == 0.7
    assert scores[("e1", "always")].score == 0.0 and task.runs.count("always") == 1  # recorded as timed out too: not run again
    assert sorted(task.runs) == ["always", "fine", "fine", "fine2", "fine2"] and len(task.scopes) == 2
