"""``--feedback bandit``: the lever, recipe and kind of scaffold change chosen by UCB1 from this
history's own outcomes (gain per unit of cost), recorded with its statistics and recomputed by
recorded replay."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sia_engine.domain.events import FeedbackVerdict, RunConfigured, decode_envelope
from sia_engine.domain.integrity import verify_store
from sia_engine.experiment.arms import run_experiment
from sia_engine.loop.feedback.bandit import STEP_CALLS, UNTRIED, BanditPolicy, Outcome, outcomes, ucb_stage
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig
from store import Store
from tests.loop_helpers import TASK, format_then_content_errors, scripted, sometimes_wrong

CFG = LoopConfig(task="arith", iterations=4, train_episodes=4, val_episodes=4, samples=2, feedback="bandit")


def test_untried_options_come_first_in_an_order_seeded_from_the_run() -> None:
    labels = ["scaffold:format", "scaffold:example", "weights:rft"]
    firsts = {ucb_stage(labels, (), seed=s, iteration=0).chosen_label for s in range(20)}
    assert firsts == set(labels)  # the seed decides which untried option goes first
    assert ucb_stage(labels, (), seed=3, iteration=1) == ucb_stage(labels, (), seed=3, iteration=1)  # and nothing else
    seen = (Outcome("scaffold:format", 0.1, 16),)
    st = ucb_stage(labels, seen, seed=0, iteration=1)
    assert st.chosen_label != "scaffold:format" and st.options[0].n == 1 and st.options[1].score == UNTRIED


def test_the_index_is_mean_reward_per_cost_plus_the_bonus() -> None:
    seen = (Outcome("scaffold:format", 0.10, 16), Outcome("weights:rft", 0.20, 16 + 8 * STEP_CALLS), Outcome("scaffold:format", -0.02, 16))
    st = ucb_stage(["scaffold:format", "weights:rft"], seen, seed=0, iteration=3)
    fmt, rft = st.options
    # reward = gain x cheapest cost / cost: the weights candidate's 0.20 cost 5 times as much
    assert rft.mean == pytest.approx(0.20 * 16 / (16 + 64)) and fmt.mean == pytest.approx(0.04)
    spread = 0.1  # the largest reward's size seen
    assert fmt.bonus == pytest.approx(spread * math.sqrt(2 * math.log(3) / 2)) and rft.bonus == pytest.approx(spread * math.sqrt(2 * math.log(3)))
    assert st.chosen_label == "weights:rft" and rft.score == pytest.approx(rft.mean + rft.bonus)  # explored: one outcome, a large bonus


@pytest.fixture(scope="module")
def bandit_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bandit")
    with Store.create(root) as s:
        Loop(s, task=TASK, model=scripted(format_then_content_errors), feedback=BanditPolicy(), config=CFG).run()
    return root


def test_the_bandit_records_its_choice_and_learns_from_the_outcomes(bandit_run: Path) -> None:
    with Store.open(bandit_run, read_only=True) as s:
        verdicts = [e for e in map(decode_envelope, s.log.read("main")) if isinstance(e, FeedbackVerdict)]
        seen = outcomes(s.log, "main")
    assert len(verdicts) == 4 and all(v.policy == "bandit" for v in verdicts)
    for k, v in enumerate(verdicts):
        if v.lever == "none":
            continue
        [stage] = v.choice.stages
        assert stage.method == "ucb1" and stage.options[stage.chosen].label == stage.chosen_label
        tried = sum(o.n or 0 for o in stage.options)
        assert tried == len([o for o in seen[:k] if o.option in {x.label for x in stage.options}])  # what it knew then
        assert f"UCB1 over {len(seen[:k])} outcomes of this history: {stage.chosen_label}" in v.rationale
    assert len(seen) >= 3 and all(o.cost > 0 for o in seen)
    assert {o.option.split(":")[0] for o in seen} <= {"scaffold", "weights"}
    weights = [o for o in seen if o.option.startswith("weights")]
    assert all(o.cost > STEP_CALLS for o in weights)  # its LoRA steps counted


def test_a_bandit_run_replays_and_a_forged_choice_diverges(bandit_run: Path, tmp_path: Path) -> None:
    from replay.recorded import replay_recorded
    from replay.stand_ins import ReplayDivergence
    from sia_engine.domain.history import History

    with Store.open(bandit_run, read_only=True) as s:
        assert verify_store(s.log, s.blobs).ok
        report = replay_recorded(s, "main", TASK)
        assert report.verdicts == 4
        events = [decode_envelope(e) for e in s.log.read("main")]
        blobs = {b: s.blobs.get(b) for b in s.blobs.ids()}
    # the same history with one bandit verdict's recorded index changed, every id recomputed
    import msgspec

    k = next(i for i, e in enumerate(events) if isinstance(e, FeedbackVerdict) and e.choice.stages)
    v = events[k]
    assert isinstance(v, FeedbackVerdict)
    stage = v.choice.stages[0]
    forged_opt = msgspec.structs.replace(stage.options[0], score=stage.options[0].score + 1.0)
    events[k] = msgspec.structs.replace(v, choice=msgspec.structs.replace(v.choice, stages=(msgspec.structs.replace(stage, options=(forged_opt, *stage.options[1:])),)))
    with Store.create(tmp_path / "forged") as f:
        for b, data in blobs.items():
            f.blobs.put(data, suffix="safetensors")
        f.log.init_branch("main")
        h = History.open(f.log, "main", blobs=f.blobs)
        for e in events:
            h.record(e)
        with pytest.raises(ReplayDivergence, match="choice"):
            replay_recorded(f, "main", TASK)


def test_an_experiment_arm_both_bandit_runs_with_the_bandit_and_says_so_on_its_fork(tmp_path: Path) -> None:
    with Store.create(tmp_path) as s:
        result = run_experiment(s, task=TASK, model=scripted(sometimes_wrong), feedback=RulePolicy,
                                config=LoopConfig(task="arith", train_episodes=4, val_episodes=4, samples=2), name="e",
                                arms=("both", "both-bandit"), seeds=(0,), iterations=2)
        own = [decode_envelope(e) for e in s.log.read("e-both-bandit-s0", after_seq=-1)]
        rule_own = [decode_envelope(e) for e in s.log.read("e-both-s0", after_seq=-1)]
    configured = [e for e in own if isinstance(e, RunConfigured)]
    assert configured and configured[0].config["feedback"] == "bandit"
    assert {e.policy for e in own if isinstance(e, FeedbackVerdict)} == {"bandit"}
    assert {e.policy for e in rule_own if isinstance(e, FeedbackVerdict)} == {"rule"}
    assert {r.arm for r in result.arms} == {"both", "both-bandit"}


def test_the_command_takes_feedback_bandit(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sia_engine.cli.main import main

    r = CliRunner().invoke(main, ["run", "--task", "arith", "--model", "tiny", "--iterations", "1", "--feedback", "bandit", "--train-episodes", "2",
                                  "--val-episodes", "2", "--samples", "2", "--lora-steps", "1", "--store", str(tmp_path)])
    assert r.exit_code == 0, r.output[-2000:]
    with Store.open(tmp_path, read_only=True) as s:
        assert any(isinstance(e, FeedbackVerdict) and e.policy == "bandit" for e in map(decode_envelope, s.log.read("main")))
