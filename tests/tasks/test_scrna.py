"""scrna-denoise: exact formulas, split, data checks, baselines, the sandboxed solution."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from tasks.scrna.baselines import BASELINES
from tasks.scrna.data import InvalidCounts, default_counts, load_counts
from tasks.scrna.metrics import control_scores, evaluate, mcv_split, mse, poisson
from tasks.scrna.task import ScrnaDenoise, parse_config
from tests.conftest import shared_data

RNG = np.random.default_rng(0)
COUNTS = RNG.poisson(RNG.gamma(0.5, 2.0, size=(40, 30))).astype(np.int64)


def test_split_is_the_official_binomial_draw() -> None:
    s = mcv_split(COUNTS, 3)
    full = np.random.RandomState(3).binomial(COUNTS, 0.9)
    keep = full.sum(0) > 0
    np.testing.assert_array_equal(s.train, full[:, keep])
    np.testing.assert_array_equal(s.test, (COUNTS - full)[:, keep])
    assert (s.train.sum(0) > 0).all()


def test_mse_by_hand() -> None:
    test = np.array([[1.0, 3.0], [0.0, 0.0]])
    den = np.array([[2.0, 2.0], [1.0, 1.0]])
    a = np.log1p(np.array([[2500.0, 7500.0], [0.0, 0.0]]))  # a cell without counts stays zero
    b = np.log1p(np.array([[5000.0, 5000.0], [5000.0, 5000.0]]))
    assert mse(test, den) == pytest.approx(np.mean((a - b) ** 2), rel=1e-15)


def test_poisson_is_the_official_swapped_formula() -> None:
    train = np.array([[4.0, 4.0]])
    test = np.array([[1.0, 0.0]])
    den = np.array([[2.0, 6.0]])
    d = den * 1.0 / 8.0
    expected = np.mean(test - d * np.log(test + 1e-6))
    assert poisson(train, test, den) == pytest.approx(expected, rel=1e-15)


def test_normalised_scores_of_the_controls() -> None:
    s = mcv_split(COUNTS, 0)
    c = control_scores(s)
    none = evaluate(s, s.train.astype(float), c)
    perfect = evaluate(s, s.test.astype(float), c)
    assert (none.mse_normalized, none.poisson_normalized, none.score) == (0.0, 0.0, 0.0)
    assert (perfect.mse_normalized, perfect.poisson_normalized, perfect.score) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        evaluate(s, -np.ones(s.train.shape), c)
    with pytest.raises(ValueError, match="expected"):
        evaluate(s, np.ones((2, 2)), c)


def test_load_counts_checks_raw_counts(tmp_path: Path) -> None:
    good = tmp_path / "good.h5ad"
    ad.AnnData(X=sp.csr_matrix(COUNTS.astype(np.int32))).write_h5ad(good)
    np.testing.assert_array_equal(load_counts(good), COUNTS)
    bad = tmp_path / "norm.h5ad"
    ad.AnnData(X=np.log1p(COUNTS.astype(float))).write_h5ad(bad)
    with pytest.raises(InvalidCounts, match=r"\.X holds non-integer values .* it looks normalised; scrna-denoise needs raw integer UMI counts"):
        load_counts(bad)
    neg = tmp_path / "neg.h5ad"
    ad.AnnData(X=-COUNTS.astype(float) - 1).write_h5ad(neg)
    with pytest.raises(InvalidCounts, match=r"negative values \(-"):
        load_counts(neg)
    (tmp_path / "junk.h5ad").write_bytes(b"not hdf5")
    with pytest.raises(InvalidCounts, match="not a readable .h5ad file"):
        load_counts(tmp_path / "junk.h5ad")


def test_default_data_matches_the_shared_recovery() -> None:
    shared = shared_data("scrna", "pbmc68k_reduced_counts.h5ad")
    np.testing.assert_array_equal(default_counts(), ad.read_h5ad(shared).X.toarray())


def test_baselines_on_real_counts() -> None:
    counts = load_counts(shared_data("scrna", "pbmc68k_reduced_counts.h5ad"))
    s = mcv_split(counts, 0)
    c = control_scores(s)
    scores = {n: evaluate(s, f(s.train), c).score for n, f in BASELINES.items()}
    assert scores["no-denoising"] == 0.0
    assert scores["magic"] > 0.1  # diffusion helps the Poisson metric here
    assert all(np.isfinite(v) for v in scores.values())


def test_parse_config_clamps_and_rejects() -> None:
    cfg = parse_config('{"n_pcs": 500, "k": 1, "t": 2.6, "transform": "cube", "clip": -3')
    assert cfg == {"n_pcs": 100, "k": 2, "t": 3, "transform": "sqrt", "normalize": True, "rescale": True, "clip": 0.0}
    assert parse_config("no json") is None
    assert parse_config('{"n_pcs": "many"}') is None
    assert parse_config('{"n_pcs": NaN}') is None


def test_solution_runs_in_the_sandbox_and_is_scored(tmp_path: Path) -> None:
    task = ScrnaDenoise(shared_data("scrna", "pbmc68k_reduced_counts.h5ad"), protect=(str(tmp_path),))
    ep = task.episodes("train")[0]
    good = task.score(ep, '{"n_pcs": 20, "k": 15, "t": 3, "transform": "sqrt", "normalize": true, "rescale": true, "clip": 2.0}')
    assert good.failure == "content" and good.score > 0.5 and good.metrics["ran"] == 1.0  # < 0.9: room to improve
    [call] = good.tools
    assert call.name == "sandbox" and call.outputs["status"] == "ok" and call.inputs["config"]["clip"] == 2.0
    # the same configuration on validation episodes uses another split
    val = task.score(task.episodes("val")[0], '{"n_pcs": 20, "k": 15, "t": 3, "transform": "sqrt", "normalize": true, "rescale": true, "clip": 2.0}')
    assert val.score != good.score
    assert task.score(ep, "I would use PCA").failure == "format"
    again = task.score(ep, '{"n_pcs": 20, "k": 15, "t": 3, "transform": "sqrt", "normalize": true, "rescale": true, "clip": 2.0}')
    assert again.score == good.score and again.tools[0].outputs["cached"] is True  # not run twice, and says so
    assert "cached" not in good.tools[0].outputs
    # one cache per scope (an experiment's arm): a branch says cached only of what it ran itself
    task.cache_scope("e1-weights-s0")
    fresh = task.score(ep, '{"n_pcs": 20, "k": 15, "t": 3, "transform": "sqrt", "normalize": true, "rescale": true, "clip": 2.0}')
    assert fresh.score == good.score and "cached" not in fresh.tools[0].outputs
    task.cache_scope("e1-weights-s0")  # the same scope: the cache kept
    assert task.score(ep, '{"n_pcs": 20, "k": 15, "t": 3, "transform": "sqrt", "normalize": true, "rescale": true, "clip": 2.0}').tools[0].outputs["cached"] is True


def test_random_answers_cover_the_family_and_parse_as_drawn() -> None:
    """Random search's answers: valid configurations, every value inside its range (parsing
    them changes nothing), drawn deterministically from the stream."""
    import json
    import random

    from tasks.scrna.family import RANGES, TRANSFORMS

    task = ScrnaDenoise()
    ep = task.episodes("val")[0]
    seen = set()
    for j in range(40):
        answer = task.random_answer(random.Random(j), ep)
        cfg = parse_config(answer)
        assert cfg is not None and cfg == json.loads(answer)
        assert all(lo <= cfg[k] <= hi for k, (lo, hi) in RANGES.items()) and cfg["transform"] in TRANSFORMS
        seen.add(cfg["transform"])
        assert task.random_answer(random.Random(j), ep) == answer
    assert seen == set(TRANSFORMS)
