"""The improvement loop: levers, the gate, resume, crash safety, run settings."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sia_engine.domain.events import IterationStarted, decode_envelope
from sia_engine.domain.history import rebuild
from sia_engine.domain.integrity import verify_store
from sia_engine.domain.state import state_hash
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig, RunMismatch
from sia_engine.models.protocol import LoraSettings, ScriptedModel
from store import Store
from tests.loop_helpers import (
    TASK,
    answers_in_sentences_until_told,
    format_then_content_errors,
    scripted,
    sometimes_wrong,
)

ROOT = Path(__file__).resolve().parents[3]


def run_loop(store: Store, model, iterations: int = 3, **cfg):  # type: ignore[no-untyped-def]
    config = LoopConfig(task="arith", iterations=iterations, **cfg)
    return Loop(store, task=TASK, model=model, feedback=cfg.pop("feedback_agent", RulePolicy()), config=config).run()


def kinds(store: Store, branch: str = "main") -> list[str]:
    return [e.kind for e in store.log.read(branch)]


def test_scaffold_patch_accepted_when_better(tmp_path: Path) -> None:
    with Store.create(tmp_path) as s:
        state = run_loop(s, scripted(), iterations=1, levers=("scaffold",))
        [v0, v1] = state.ordered_versions()
        assert v0.score("val") == 0.5 and v1.lever == "scaffold" and v1.score("val") == 1.0
        assert state.head == v1.version_id and v1.status == "accepted"
        assert v1.scaffold.output_format == TASK.format_hint
        assert verify_store(s.log, s.blobs).ok


def test_gate_rejects_a_worse_candidate(tmp_path: Path) -> None:
    with Store.create(tmp_path) as s:
        # iteration 0 fixes the format (accepted); the weights lever then makes things worse
        state = run_loop(s, scripted(format_then_content_errors), iterations=3)
        weights = [v for v in state.versions.values() if v.lever == "weights"]
        assert weights and all(v.status == "rejected" for v in weights)
        head = state.head_version
        assert head is not None and head.adapter is None and head.lever == "scaffold"
        rejected = [decode_envelope(e) for e in s.log.read("main", kinds=["version_rejected"])]
        assert any(r.version_id == weights[0].version_id and r.head == head.version_id for r in rejected)  # type: ignore[attr-defined]


def test_both_levers_with_the_tiny_model(tmp_path: Path) -> None:
    from sia_engine.models.presets import tiny_model

    with Store.create(tmp_path) as s:
        state = run_loop(s, tiny_model(), iterations=3, lora=LoraSettings(steps=4, batch_size=2))
        levers = {v.lever for v in state.versions.values()}
        assert {"scaffold", "weights"} <= levers
        [adapter_ev] = [decode_envelope(e) for e in s.log.read("main", kinds=["adapter_checkpointed"])]
        assert s.blobs.exists(adapter_ev.blob)  # type: ignore[attr-defined]
        assert adapter_ev.peft_config["peft_type"] == "LORA" and adapter_ev.metrics["steps"] == 4.0  # type: ignore[attr-defined]
        assert verify_store(s.log, s.blobs).ok


def test_every_iteration_is_recorded_once_and_runs_resume(tmp_path: Path) -> None:
    with Store.create(tmp_path) as s:
        run_loop(s, scripted(sometimes_wrong), iterations=2)
        first = s.log.count()
        again = run_loop(s, scripted(sometimes_wrong), iterations=2)  # budget already spent: nothing to do
        assert s.log.count() == first
        more = run_loop(s, scripted(sometimes_wrong), iterations=4)
        assert more.iteration == 3 and again.iteration == 1
        starts = [decode_envelope(e).iteration for e in s.log.read("main", kinds=["iteration_started"])]  # type: ignore[attr-defined]
        assert starts == [0, 1, 2, 3]


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    with Store.create(tmp_path) as s:
        run_loop(s, scripted(), iterations=1)
        with pytest.raises(RunMismatch) as exc:
            run_loop(s, scripted(), iterations=2, seed=5)
        assert str(exc.value) == (
            "this branch holds a run with seed 0, not 5; resume with the recorded settings, "
            "or fork the branch (sia fork BRANCH@SEQ NEW) and run the fork with the new ones"
        )
        with pytest.raises(RunMismatch, match="base model"):
            run_loop(s, ScriptedModel(answers_in_sentences_until_told, name="other"), iterations=2)


def test_weights_lever_needs_a_trainable_model(tmp_path: Path) -> None:
    from sia_engine.errors import SiaError
    from sia_engine.models.recorded import RecordedModel

    with Store.create(tmp_path) as s, pytest.raises(SiaError, match="cannot train weights: run it with --levers scaffold"):
        run_loop(s, RecordedModel(scripted().ref, []), iterations=1)


CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from store import Store
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig
from tests.loop_helpers import TASK, scripted, sometimes_wrong
with Store.create(sys.argv[1]) as s:
    print("go", flush=True)
    Loop(s, task=TASK, model=scripted(sometimes_wrong, delay={delay}), feedback=RulePolicy(),
         config=LoopConfig(task="arith", iterations=5, train_episodes=6, val_episodes=6)).run()
print("done", flush=True)
"""


def test_sigkill_at_random_points_then_resume_gives_the_same_run(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    clean = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), delay=0.0), str(tmp_path / "clean")], env=env, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    with Store.open(tmp_path / "clean") as s:
        want_state, want_head = rebuild(s.log, "main")
        want_count = s.log.count()
    crashy = tmp_path / "crashy"
    rng = random.Random(7)
    kills = 0
    script = CHILD.format(root=str(ROOT), delay=0.03)
    for _ in range(30):
        child = subprocess.Popen([sys.executable, "-c", script, str(crashy)], env=env, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "go"
        time.sleep(rng.uniform(0.05, 0.6))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        child.wait()
        if child.returncode == 0:
            break
        with Store.open(crashy) as s:
            assert verify_store(s.log, s.blobs).ok
    else:  # still not finished after the kills: finish without interruption
        subprocess.run([sys.executable, "-c", script, str(crashy)], env=env, check=True, capture_output=True)
    assert kills >= 4, kills
    with Store.open(crashy) as s:
        got_state, got_head = rebuild(s.log, "main")
        assert s.log.count() == want_count
        assert state_hash(got_state) == state_hash(want_state)
        assert got_head == want_head  # the very same events, down to their ids
        starts = [decode_envelope(e) for e in s.log.read("main", kinds=["iteration_started"])]
        assert [x.iteration for x in starts if isinstance(x, IterationStarted)] == [0, 1, 2, 3, 4]


COUNTING_CHILD = """
import json, os, signal, sys
sys.path.insert(0, {root!r})
from store import Store
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.hooks import Hooks
from sia_engine.loop.loop import Loop, LoopConfig
from tests.loop_helpers import TASK, scripted, sometimes_wrong

calls = []

class Counting:
    def __getattr__(self, k):
        return getattr(TASK, k)
    def score(self, ep, output):
        calls.append(ep.id)
        return TASK.score(ep, output)

class KillAt(Hooks):
    seen = 0
    def phase(self, name, total):
        at, nth = (os.environ.get("SIA_TEST_KILL_AT", "") + "#1").split("#")[:2]
        if at and name.startswith(at):
            KillAt.seen += 1
            if KillAt.seen == int(nth):
                os.kill(os.getpid(), signal.SIGKILL)

try:
    with Store.create(sys.argv[1]) as s:
        Loop(s, task=Counting(), model=scripted(sometimes_wrong), feedback=RulePolicy(), hooks=KillAt(),
             config=LoopConfig(task="arith", iterations=2, train_episodes=6, val_episodes=4, samples=2)).run()
finally:
    with open(sys.argv[2], "w") as f:
        json.dump(calls, f)
"""


@pytest.mark.parametrize("kill_at", ["feedback", "LoRA training", "val rollouts#2", "train rollouts#2"])
def test_a_resumed_iteration_never_rescores_a_recorded_trajectory(tmp_path: Path, kill_at: str) -> None:
    """Everything the Feedback Agent and the gate read is in the log: after a SIGKILL between steps,
    the resumed process scores only outputs it generates itself."""
    import json

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = COUNTING_CHILD.format(root=str(ROOT))
    store = tmp_path / "s"
    first = subprocess.run([sys.executable, "-c", script, str(store), str(tmp_path / "a.json")], env={**env, "SIA_TEST_KILL_AT": kill_at})
    assert first.returncode == -signal.SIGKILL
    with Store.open(store) as s:
        before = len(s.log.read("main", kinds=["trajectory_recorded"]))
    assert before > 0
    second = subprocess.run([sys.executable, "-c", script, str(store), str(tmp_path / "b.json")], env=env)
    assert second.returncode == 0
    with Store.open(store) as s:
        after = len(s.log.read("main", kinds=["trajectory_recorded"]))
    assert len(json.loads((tmp_path / "b.json").read_text())) == after - before  # one call per new trajectory, none for old ones
