"""`sia diff`, `sia compare`, `sia export --parquet`: read from the log alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from replay.diff import adapter_deltas, compare_branches, diff_versions
from sia_engine.cli.main import main
from sia_engine.domain.history import fork, rebuild
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.models.presets import tiny_model
from sia_engine.models.protocol import LoraSettings
from store import Store
from tests.loop_helpers import TASK


@pytest.fixture(scope="module")
def two_branches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """main: three iterations of the tiny model, both levers; 'alt': forked at the run's start, scaffold only."""
    path = tmp_path_factory.mktemp("diff") / "store"
    with Store.create(path) as s:
        cfg = dict(task="arith", train_episodes=4, val_episodes=2, samples=2, lora=LoraSettings(steps=2, lr=1e-2))
        Loop(s, task=TASK, model=tiny_model(), feedback=RulePolicy(), config=LoopConfig(iterations=3, **cfg)).run()  # type: ignore[arg-type]
        fork(s.log, "alt", source="main", at_seq=0, reason="t", blobs=s.blobs)
        Loop(s, task=TASK, model=tiny_model(), feedback=RulePolicy(), branch="alt",
             config=LoopConfig(iterations=2, levers=("scaffold",), **cfg)).run()  # type: ignore[arg-type]
    return path


def test_diff_shows_scaffold_text_adapter_norms_and_scores(two_branches: Path) -> None:
    with Store.open(two_branches, read_only=True) as s:
        state, _ = rebuild(s.log, "main")
        vs = state.ordered_versions()
        with_adapter = [v for v in vs if v.adapter]
        plain = vs[0]
        assert with_adapter, [v.lever for v in vs]
        d = diff_versions(s, plain.version_id, with_adapter[0].version_id)
        deltas = adapter_deltas(s.blobs.get(with_adapter[0].adapter))  # type: ignore[arg-type]
    assert d["a"]["adapter"] is None and d["b"]["adapter"] == with_adapter[0].adapter
    mods = {m["module"]: m for m in d["adapter_modules"]}
    assert set(mods) == set(deltas) and all(m["norm_a"] == 0.0 and m["norm_b"] > 0 for m in mods.values())
    some = next(iter(deltas))
    assert mods[some]["norm_diff"] == pytest.approx(float(np.linalg.norm(deltas[some])))
    assert d["a"]["scores"]["val"] == plain.score("val")
    r = CliRunner().invoke(main, ["diff", plain.version_id[:10], with_adapter[0].version_id[:10], "--store", str(two_branches)])
    assert r.exit_code == 0 and "adapter updates" in r.output


def test_diff_of_two_scaffolds_is_a_text_diff(two_branches: Path) -> None:
    with Store.open(two_branches, read_only=True) as s:
        state, _ = rebuild(s.log, "alt")
        v0, v1 = state.ordered_versions()[0], [v for v in state.ordered_versions() if v.lever == "scaffold"][0]
        d = diff_versions(s, v0.version_id, v1.version_id, branch="alt")
    assert d["scaffold_diff"].startswith(f"--- scaffold {v0.version_id[:12]}")
    assert any(line.startswith("+") and "output_format" in line for line in d["scaffold_diff"].splitlines())


def test_compare_lines_up_iterations_of_branches(two_branches: Path) -> None:
    with Store.open(two_branches, read_only=True) as s:
        rows = compare_branches(s, ["main", "alt"])
    main_rows = [r for r in rows if r["branch"] == "main"]
    alt_rows = [r for r in rows if r["branch"] == "alt"]
    assert [r["iteration"] for r in main_rows] == [0, 1, 2] and [r["iteration"] for r in alt_rows] == [0, 1]
    assert all(r["from"] == "alt" for r in alt_rows)  # forked at the run's start: every iteration is its own
    assert {r["decision"] for r in rows} <= {"accepted", "rejected", "none"}
    assert any(r["recipe"] for r in main_rows if r["lever"] == "weights")
    r = CliRunner().invoke(main, ["compare", "main", "alt", "--store", str(two_branches), "--json"])
    assert r.exit_code == 0 and len(json.loads(r.output)) == 5


def test_export_parquet_holds_every_event_version_and_trajectory(two_branches: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["export", "--parquet", str(tmp_path / "x"), "--store", str(two_branches), "--json"])
    assert r.exit_code == 0, r.output
    counts = json.loads(r.output)
    events = pq.read_table(tmp_path / "x" / "events.parquet").to_pylist()
    trajs = pq.read_table(tmp_path / "x" / "trajectories.parquet").to_pylist()
    versions = pq.read_table(tmp_path / "x" / "versions.parquet").to_pylist()
    with Store.open(two_branches, read_only=True) as s:
        assert len(events) == counts["events"] == s.log.count()
        ids = {e["id"] for e in events}
        assert all(e.id in ids for b in ("main", "alt") for e in s.log.read(b))
        n_trajs = sum(1 for b in ("main", "alt") for e in s.log.read(b) if e.kind == "trajectory_recorded" and e.branch == b)
    assert len(trajs) == n_trajs and {t["branch"] for t in trajs} == {"main", "alt"}
    assert {v["branch"] for v in versions} == {"main", "alt"} and all(len(v["version_id"]) == 64 for v in versions)
