"""Answers from a closed set (``Request.options``): every output is one of the options, chosen by
the model's own likelihood (greedy) or drawn from it (sampled, seeded), recorded with its scores,
and a loop run on such a task replays."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from sia_engine.domain.events import ActionTaken, TrajectoryRecorded, decode_envelope
from sia_engine.domain.scaffold import Decoding
from sia_engine.errors import SiaError
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.models.options import pick
from sia_engine.models.presets import tiny_model
from sia_engine.models.protocol import Message, Request
from sia_engine.models.protocol import LoraSettings
from store import Store
from tests.loop_helpers import TASK

OPTIONS = ("theft", "fraud", "bribery", "arson")
MSGS = (Message("user", "Which charge?"),)


def test_greedy_takes_the_most_likely_option_and_records_every_score() -> None:
    m = tiny_model(init_std=0.5)
    [g] = m.generate([Request(MSGS, Decoding(temperature=0.0), seed=0, options=OPTIONS)])
    scores = [s for s, _ in m.score_options_shared(MSGS, OPTIONS)]
    assert g.text == OPTIONS[max(range(4), key=lambda i: (scores[i], -i))] and g.finish == "option"
    assert g.raw["option_logprobs"] == [round(s, 6) for s in scores]
    # mixed with free requests in one call: each answered its own way, in order
    out = m.generate([Request(MSGS, Decoding(temperature=0.0, max_new_tokens=3), seed=0), Request(MSGS, Decoding(temperature=0.0), seed=0, options=OPTIONS)])
    assert out[1].text == g.text and out[0].finish != "option"


def test_sampling_draws_from_the_options_probabilities_by_seed() -> None:
    scores = [math.log(0.7), math.log(0.2), math.log(0.1)]
    draws = Counter(pick(scores, 1.0, seed) for seed in range(4000))
    assert abs(draws[0] / 4000 - 0.7) < 0.03 and abs(draws[2] / 4000 - 0.1) < 0.02
    assert [pick(scores, 1.0, s) for s in range(50)] == [pick(scores, 1.0, s) for s in range(50)]  # a replay draws the same
    assert pick(scores, 0.0, 123) == 0 and pick([0.5, 0.5], 0.0, 1) == 0  # greedy: the most likely, the first of equals
    m = tiny_model()  # its options' scores lie within a few nats: sampling at 2.0 takes several
    gens = m.generate([Request(MSGS, Decoding(temperature=2.0), seed=7, n=24, options=OPTIONS)])
    assert len(gens) == 24 and {g.text for g in gens} <= set(OPTIONS) and len({g.text for g in gens}) > 1


def test_an_endpoint_refuses_options_with_what_to_do() -> None:
    from sia_engine.models.openai_compat import OpenAIChatModel

    m = OpenAIChatModel("http://127.0.0.1:9", "x")
    with pytest.raises(SiaError, match="use a local model"):
        m.generate([Request(MSGS, Decoding(), seed=0, options=OPTIONS)])


class ArithFromOptions(type(TASK)):  # type: ignore[misc]
    """arith answered from a closed set of numbers."""

    def answer_options(self, episode):  # type: ignore[no-untyped-def]
        return tuple(str(n) for n in range(20))


def test_a_task_with_options_runs_records_them_and_replays(tmp_path: Path) -> None:
    from replay.recorded import replay_recorded

    task = ArithFromOptions()
    cfg = LoopConfig(task="arith", iterations=2, train_episodes=3, val_episodes=3, samples=2, lora=LoraSettings(steps=1))
    with Store.create(tmp_path) as s:
        Loop(s, task=task, model=tiny_model(init_std=0.5), feedback=RulePolicy(), config=cfg).run()
        events = [decode_envelope(e) for e in s.log.read("main")]
        gens = [e for e in events if isinstance(e, ActionTaken) and e.is_generation]
        assert gens and all(tuple(e.inputs["options"]) == task.answer_options(None) for e in gens)
        outs = [e.output for e in events if isinstance(e, TrajectoryRecorded)]
        assert outs and all(o in task.answer_options(None) for o in outs)  # every output a valid answer
        assert replay_recorded(s, "main", task).verdicts == 2


def test_the_shared_prompt_pass_scores_as_one_pass_per_option() -> None:
    """A closed-set answer reads the prompt once per 16 options (its KV cache), not once per option."""
    m = tiny_model(init_std=0.5)
    texts = ["theft\n", "fraud and more\n", "b\n", "arson\n", "x"]
    plain, shared = m.score_options(MSGS, texts), m.score_options_shared(MSGS, texts, chunk=2)
    assert [n for _, n in plain] == [n for _, n in shared]
    assert [s for s, _ in shared] == pytest.approx([s for s, _ in plain], abs=1e-3)
