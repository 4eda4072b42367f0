"""LawBench: published GPT-3.5 predictions reproduce the published scores for every official
scorer; the simplified 2-1 says so; loaders and the charge task."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tasks.lawbench import (
    LawBenchDataError,
    load_predictions,
    prediction_sets,
    score_file,
)
from tasks.lawbench.scorers import SCORERS, SIMPLIFIED, rc_f1
from tests.conftest import shared_data

ALL_TASKS = ["1-1", "1-2", *[f"2-{i}" for i in range(1, 11)], *[f"3-{i}" for i in range(1, 9)]]


def test_there_is_a_scorer_for_each_of_the_20_tasks() -> None:
    assert sorted(SCORERS, key=lambda t: [int(x) for x in t.split("-")]) == ALL_TASKS
    assert SIMPLIFIED == {"2-1"}


def _published() -> dict[str, float]:
    rows = csv.DictReader(shared_data("lawbench", "predictions", "zero_shot", "results.csv").open())
    return {r["task"]: float(r["score"]) for r in rows if r["model_name"] == "GPT-3.5-turbo-0613"}


@pytest.mark.parametrize("task", [t for t in ALL_TASKS if t not in ("2-9", "2-10")])
def test_gpt35_predictions_reproduce_the_published_scores(task: str) -> None:
    path = shared_data("lawbench", "predictions", "zero_shot", "GPT-3.5-turbo-0613", f"{task}.json")
    got = score_file(task, load_predictions(path))
    want = _published()[task]
    if task in SIMPLIFIED:
        assert got["simplified"] == 1.0 and 0.0 <= got["score"] <= 1.0  # not ChERRANT: no conformance claimed
    else:
        assert round(got["score"], 4) == round(want, 4), (task, got["score"], want)


def test_scorer_details() -> None:
    mc = SCORERS["1-2"]
    pairs = [("", "答案是B", "正确答案：B。"), ("", "A或B", "正确答案：B。"), ("", "不知道", "正确答案：B。")]
    assert mc(pairs) == {"score": 1 / 3, "abstention_rate": 1 / 3}
    assert rc_f1("21万元借款", "借款21万元") == 1.0 and rc_f1("", "") == 1.0 and rc_f1("a", "") == 0.0
    prison = SCORERS["3-4"]([("", "三年", "刑期:36个月"), ("", "死刑", "刑期:死刑"), ("", "无", "刑期:12个月")])
    assert prison["score"] == pytest.approx(0.5) and prison["abstention_rate"] == pytest.approx(1 / 3)
    art = SCORERS["3-1"]([("", "刑法第二百六十四条、第二十五条", "法条:刑法第264、25条")])
    assert art["score"] == 1.0
    # as in the official code, "第…款" is cut from the first 第: "第二十五条第一款" loses article 25
    art = SCORERS["3-1"]([("", "刑法第二百六十四条、第二十五条第一款", "法条:刑法第264、25条")])
    assert art["score"] == pytest.approx(2 / 3)


def test_loaders_give_typed_errors(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    bad = tmp_path / "m" / "3-3.json"
    bad.write_text("[1, 2]")
    with pytest.raises(LawBenchDataError, match='expected {"0": {"origin_prompt", "prediction", "refr"}'):
        load_predictions(bad)
    bad.write_text(json.dumps({"0": {"prediction": "x"}}))
    with pytest.raises(LawBenchDataError, match='item "0" is missing or lacks prediction/refr'):
        load_predictions(bad)
    assert set(prediction_sets(tmp_path)) == {"m"}
    with pytest.raises(LawBenchDataError, match="not a folder"):
        prediction_sets(tmp_path / "none")


def test_score_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sia_engine.cli.main import main

    src = shared_data("lawbench", "predictions", "zero_shot", "GPT-3.5-turbo-0613", "3-7.json")
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "3-7.json").write_bytes(src.read_bytes())
    r = CliRunner().invoke(main, ["score", "lawbench", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output[r.output.index("["):])
    assert rows == [{"task": "3-7", "model": "gpt", "score": 0.612, "abstention_rate": 0.004, "simplified": False}]


def test_charge_task() -> None:
    from tasks import get_task

    task = get_task("lawbench-charge", data=str(shared_data("lawbench")))
    assert len(task.labels) == 16  # type: ignore[attr-defined]  # every charge with 4 or more single-label items in 0-349
    splits = {s: task.episodes(s) for s in ("train", "val", "test")}
    ids = [e.id for es in splits.values() for e in es]
    assert len(ids) == len(set(ids)) == 80 and all(int(i.rsplit("-", 1)[1]) < 350 for i in ids)
    assert len(splits["val"]) == len(splits["test"]) == 16  # one case of every charge in each (stratified)
    assert {e.gold for e in splits["val"]} == {e.gold for e in splits["test"]} == set(task.labels)  # type: ignore[attr-defined]
    # answers come from the closed set: the charges, none listed in the prompt
    assert task.answer_options(splits["val"][0]) == task.labels  # type: ignore[attr-defined]
    assert not any(c in task.scaffold().output_format for c in task.labels)  # type: ignore[attr-defined]
    assert len(get_task("lawbench-charge", data=str(shared_data("lawbench")), top_k=8).labels) == 8  # type: ignore[attr-defined]
    ep = splits["val"][0]
    assert task.score(ep, f"罪名:{ep.gold}").score == 1.0
    assert task.score(ep, "不清楚").failure == "abstain"
    assert task.score(ep, f"{ep.gold}或者故意杀人").failure == "format"
    other = next(c for c in task.labels if c != ep.gold)  # type: ignore[attr-defined]
    assert task.score(ep, other).failure == "content"
    card = next(e for es in splits.values() for e in es if e.gold == "信用卡诈骗")
    assert task.score(card, "罪名:信用卡诈骗").score == 1.0  # 诈骗 inside it is not a second charge
    with pytest.raises(LawBenchDataError, match="lawbench-charge needs the LawBench data folder"):
        get_task("lawbench-charge")
