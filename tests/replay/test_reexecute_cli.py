"""`sia replay --mode reexecute` on a store recorded with the model Feedback Agent (`--feedback llm`):
a divergence in the option scores it recorded (a ``feedback-score`` action, which has no sample)
is printed as what it is."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from sia_engine.cli.main import main
from sia_engine.loop.feedback.model import LLMPolicy
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.models.hf import HFModel
from sia_engine.models.presets import tiny_model
from store import Store
from tests.loop_helpers import TASK


@pytest.fixture(scope="module")
def llm_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One iteration of the tiny model judged by itself, as `sia run --model tiny --feedback llm` has it."""
    path = tmp_path_factory.mktemp("reexecute") / "store"
    model = tiny_model()
    with Store.create(path) as s:
        cfg = LoopConfig(task="arith", iterations=1, levers=("scaffold",), feedback="llm", train_episodes=3, val_episodes=2, samples=2)
        Loop(s, task=TASK, model=model, feedback=LLMPolicy(model), config=cfg).run()
        assert any(b'"feedback-score"' in e.payload for e in s.log.read("main", kinds=["action_taken"]))
    return path


@pytest.fixture
def other_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-execution's model scores every option twice as likely in log space (the recorded scores differ)."""
    score = HFModel.score_options

    def doubled(self: HFModel, messages, options):  # type: ignore[no-untyped-def]
        return [(2.0 * lp - 1.0, n) for lp, n in score(self, messages, options)]

    monkeypatch.setattr(HFModel, "score_options", doubled)


def test_a_feedback_score_divergence_is_printed_with_its_scores(llm_store: Path, other_scores: None) -> None:
    args = ["replay", "main", "--mode", "reexecute", "--limit", "1", "--store", str(llm_store)]
    r = CliRunner().invoke(main, [*args, "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)["first_divergence"]
    assert d is not None and "sample" not in d and d["recorded"] != d["reexecuted"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and r.exception is None, r.output
    text = " ".join(r.output.split())  # rich wraps long lines
    assert "0 of 1 outputs identical" in text
    assert f"first divergence at {d['at']} (feedback-score action" in text and "option scores under version " + d["version"][:12] in text
    assert f"recorded scores {d['recorded']!r}" in text and f"recomputed {d['reexecuted']!r}" in text


def test_a_generation_divergence_still_names_its_sample(llm_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generate = HFModel.generate

    def shouted(self: HFModel, requests):  # type: ignore[no-untyped-def]
        return [msgspec.structs.replace(g, text=g.text + "!") for g in generate(self, requests)]

    monkeypatch.setattr(HFModel, "generate", shouted)  # the option scores come back as recorded, no output does
    with Store.open(llm_store, read_only=True) as s:  # re-execution re-runs these first, then the generations
        scored = sum(1 for e in s.log.read("main", kinds=["action_taken"]) if b'"feedback-score"' in e.payload)
    args = ["replay", "main", "--mode", "reexecute", "--limit", str(scored + 1), "--store", str(llm_store)]
    r = CliRunner().invoke(main, [*args, "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)["first_divergence"]
    assert d["reexecuted"] == d["recorded"] + "!"
    r = CliRunner().invoke(main, args)
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and f"first divergence at {d['at']} (sample {d['sample']}): recorded {d['recorded']!r}" in text
