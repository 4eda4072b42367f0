"""Engine-written text carries no answer: every hint, prompt and example the engine writes, run
through each task's own answer parser, is not a valid answer and scores nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.task import Task
from tasks import get_task
from tests.conftest import shared_data


def _arith() -> Task:
    return get_task("arith")


def _scrna() -> Task:
    return get_task("scrna-denoise")


def _charge() -> Task:
    return get_task("lawbench-charge", data=str(shared_data("lawbench")))


TASKS: list[Callable[[], Task]] = [_arith, _scrna, _charge]


def engine_texts(task: Task) -> dict[str, str]:
    """Everything the engine itself writes into a prompt for ``task``."""
    sc = task.scaffold()
    texts = {"format_hint": task.format_hint, "system_prompt": sc.system_prompt, "output_format": sc.output_format,
             "answer_prefix": task.answer_prefix}
    texts.update({f"scaffold example {i}": ex.output for i, ex in enumerate(sc.examples)})
    return {k: v for k, v in texts.items() if v}


@pytest.mark.parametrize("make", TASKS, ids=lambda f: f.__name__.strip("_"))
def test_no_engine_text_parses_as_an_answer(make: Callable[[], Task]) -> None:
    task = make()
    episodes = task.episodes("val")[:3]
    for where, text in engine_texts(task).items():
        assert task.parse_answer(text) is None, f"{task.name}: the {where} parses as an answer: {text!r}"
        for ep in episodes:  # as the whole answer, and after the engine's answer prefix
            for answer in (text, task.answer_prefix + text):
                s = task.score(ep, answer)
                assert s.score == 0.0 and s.failure != "none", (task.name, where, answer, s)


@pytest.mark.parametrize("make", TASKS, ids=lambda f: f.__name__.strip("_"))
def test_the_rule_policys_own_patches_carry_no_answer(make: Callable[[], Task]) -> None:
    """The values of the scaffold patches that the rule policy writes itself (not the examples it
    copies from gold training answers or from the model's own outputs)."""
    task = make()
    from tests.sia_engine.loop.test_feedback import ctx

    c = ctx(["???"] * 4)
    for ops in RulePolicy()._format_ops(c, task):
        for op in ops:
            if isinstance(op.value, str):
                assert task.parse_answer(op.value) is None, (task.name, op)


def test_a_valid_answer_does_parse() -> None:
    """The parsers used above do accept real answers (so the tests above can fail)."""
    arith, scrna = _arith(), _scrna()
    assert arith.parse_answer("12") == 12
    assert scrna.parse_answer('{"n_pcs": 30, "k": 10, "t": 3, "transform": "sqrt", "normalize": true, "rescale": true, "clip": 1.0}') is not None


def test_a_valid_charge_does_parse() -> None:
    charge = _charge()
    assert charge.parse_answer("罪名:" + charge.labels[0]) == charge.labels[0]  # type: ignore[attr-defined]
