"""Issue 19, findings 15 and 16: inputs that ended in a traceback or wrote where they should not
now end in a typed, one-line error, with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from replay.errors import OutputRefused
from sia_engine.cli.main import main
from tasks.lawbench.data import LawBenchDataError, load_predictions
from tasks.lawbench.scorers import score_file
from tasks.scrna.data import DataNotFound, InvalidCounts, load_counts


def test_counts_declaring_a_huge_matrix_are_refused_before_they_are_read(tmp_path: Path) -> None:
    import anndata
    import numpy as np
    import scipy.sparse as sp

    path = tmp_path / "huge.h5ad"
    anndata.AnnData(sp.csr_matrix((10**6, 10**5), dtype=np.float32)).write_h5ad(path)  # empty, but 10^11 entries dense
    with pytest.raises(InvalidCounts, match="over 200,000,000 entries"):
        load_counts(path)
    with pytest.raises(DataNotFound, match="it is a folder"):
        load_counts(tmp_path)


def test_lawbench_json_nested_too_deep_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 10_000 + "]" * 10_000)
    with pytest.raises(LawBenchDataError, match="nested too deep"):
        load_predictions(path)
    with pytest.raises(LawBenchDataError, match="a folder"):
        load_predictions(tmp_path)


@pytest.mark.parametrize(("task", "refr"), [("3-4", "刑期:abc个月"), ("3-6", "正确答案"), ("3-7", "上文涉及到的犯罪金额:很多元。")])
def test_a_reference_out_of_the_published_format_names_its_item(task: str, refr: str) -> None:
    good = {"3-4": "刑期:12个月", "3-6": "正确答案:A", "3-7": "上文涉及到的犯罪金额:100元。"}[task]
    pairs = [("p", "12", good), ("p", "A 12", refr)]
    with pytest.raises(LawBenchDataError, match=f"task {task}: item 1's reference"):
        score_file(task, pairs)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("demo") / "s"
    assert CliRunner().invoke(main, ["demo", "--store", str(store)]).exit_code == 0
    return store


def _adapter_version(store: Path) -> str:
    r = CliRunner().invoke(main, ["sql", "SELECT payload->>'version_id' AS v FROM events WHERE kind = 'adapter_checkpointed'",
                                  "--json", "--store", str(store)])
    return str(json.loads(r.output)[0]["v"])


def test_rebuild_of_a_demo_adapter_and_into_a_full_folder_are_refused(demo: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["rebuild", _adapter_version(demo), "--out", str(tmp_path / "a"), "--store", str(demo)])
    assert r.exit_code == 2 and r.output.startswith("error:") and "peft config" in r.output and not (tmp_path / "a").exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    r = CliRunner().invoke(main, ["rebuild", _adapter_version(demo)[:12], "--out", str(full), "--store", str(demo)])
    assert r.exit_code == 2 and "not empty" in r.output and [p.name for p in full.iterdir()] == ["keep.txt"]


def test_export_writes_only_into_a_new_or_empty_folder_outside_the_store(demo: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in demo.iterdir())
    for out, why in ((demo / "export", "inside the store"), (demo, "inside the store")):
        r = CliRunner().invoke(main, ["export", "--parquet", str(out), "--store", str(demo)])
        assert r.exit_code == 2 and why in r.output, r.output
    assert sorted(p.name for p in demo.iterdir()) == before
    (tmp_path / "link").symlink_to(tmp_path)
    r = CliRunner().invoke(main, ["export", "--parquet", str(tmp_path / "link"), "--store", str(demo)])
    assert r.exit_code == 2 and "symbolic link" in r.output
    r = CliRunner().invoke(main, ["export", "--parquet", str(tmp_path / "new"), "--store", str(demo), "--json"])
    assert r.exit_code == 0 and (tmp_path / "new" / "events.parquet").is_file()
    r = CliRunner().invoke(main, ["export", "--parquet", str(tmp_path / "new"), "--store", str(demo)])  # a second time: refused
    assert r.exit_code == 2 and "not empty" in r.output
    with pytest.raises(OutputRefused):
        from replay.errors import check_out_folder

        check_out_folder(tmp_path / "new" / "events.parquet", demo)  # a file
