"""Bad input to the task commands gets one typed `error:` line, never a traceback and never a
silent NaN (issue 9: D7, D9)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sia_engine.cli.main import main


def h5ad(path: Path, x: np.ndarray) -> Path:
    import anndata

    anndata.AnnData(X=x).write_h5ad(path)
    return path


def cli(*args: str) -> tuple[int, str, BaseException | None]:
    r = CliRunner().invoke(main, list(args))
    exc = None if r.exception is None or isinstance(r.exception, SystemExit) else r.exception
    return r.exit_code, r.output, exc


@pytest.mark.parametrize(
    "name, x, says",
    [
        ("huge", np.full((20, 30), 1e19), "above 2,147,483,647: no UMI count is that large"),
        ("zero", np.zeros((50, 40), np.float32), "holds no counts (every entry is 0)"),
        ("tiny", np.array([[1, 2], [3, 4]], np.float32), "the cross-validation split cannot rank denoisers"),
    ],
)
def test_baseline_on_bad_counts(tmp_path: Path, name: str, x: np.ndarray, says: str) -> None:
    code, out, exc = cli("baseline", "scrna-denoise", "--method", "magic", "--data", str(h5ad(tmp_path / f"{name}.h5ad", x)))
    assert exc is None and code == 2, (exc, out)
    assert out.startswith("error:") and says in " ".join(out.split()), out


def test_lawbench_scoring_refuses_what_it_cannot_score(tmp_path: Path) -> None:
    named = tmp_path / "named"
    named.mkdir()
    (named / "3-3a.json").write_text(json.dumps({"0": {"origin_prompt": "x", "prediction": "y", "refr": "z"}}))
    code, out, exc = cli("score", "lawbench", str(named))
    assert exc is None and code == 2 and "no LawBench prediction files" in out, out
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "3-3.json").write_text("{}")
    code, out, exc = cli("score", "lawbench", str(empty))
    assert exc is None and code == 2 and "holds no items" in out, out
    null = tmp_path / "null"
    null.mkdir()
    (null / "3-3.json").write_text(json.dumps({"0": {"origin_prompt": "x", "prediction": "y", "refr": None}}))
    code, out, exc = cli("score", "lawbench", str(null))
    assert exc is None and code == 2 and "has refr = None; expected text" in out, out


def test_log_limit_must_not_be_negative(tmp_path: Path) -> None:
    assert cli("demo", "--store", str(tmp_path))[0] == 0
    code, out, exc = cli("log", "--limit", "-5", "--store", str(tmp_path))
    assert exc is None and code == 2 and "-5 is not in the range x>=0" in out, out
