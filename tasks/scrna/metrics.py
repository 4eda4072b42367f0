"""OpenProblems v1 denoising: the molecular cross-validation split and both metrics, exactly.

- split: ``train = RandomState(seed).binomial(counts, 0.9)`` on the dense matrix, ``test =
  counts - train``; genes with zero total train count are dropped from both.
- MSE: normalise ``test`` and ``denoised`` to 10,000 counts per cell (cells with no counts stay
  zero, as in scanpy's normalize_total), log1p, mean squared error over all cells x genes.
- Poisson, as the official code computes it (its arguments are swapped):
  ``d = denoised * sum(test) / sum(train)``; ``mean(test - d * log(test + 1e-6))``.
- normalised score per metric: ``(worst - score) / (worst - best)`` with worst = no denoising
  (``denoised = train``) and best = perfect denoising (``denoised = test``); the task score is the
  mean of the two (0 = no denoising, 1 = perfect, can go negative).
"""

from __future__ import annotations

import msgspec
import numpy as np

from sia_engine.errors import SiaError

__all__ = ["Split", "mcv_split", "mse", "poisson", "Scores", "evaluate", "control_scores"]


class Split(msgspec.Struct, frozen=True):
    train: np.ndarray  # cells x genes, integer counts
    test: np.ndarray
    seed: int
    kept_genes: np.ndarray  # indices into the input's genes


def mcv_split(counts: np.ndarray, seed: int) -> Split:
    counts = np.asarray(counts)
    train = np.random.RandomState(seed).binomial(counts, 0.9)
    test = counts - train
    keep = np.flatnonzero(train.sum(axis=0) > 0)
    return Split(train[:, keep], test[:, keep], seed, keep)


def _normalize_log(x: np.ndarray, target_sum: float = 1e4) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    counts = x.sum(axis=1, keepdims=True)
    counts = counts + (counts == 0)  # scanpy: cells without counts are left at zero
    out: np.ndarray = np.log1p(x / counts * target_sum)
    return out


def mse(test: np.ndarray, denoised: np.ndarray) -> float:
    a, b = _normalize_log(test), _normalize_log(denoised)
    return float(np.mean((a - b) ** 2))


def poisson(train: np.ndarray, test: np.ndarray, denoised: np.ndarray) -> float:
    test = np.asarray(test, dtype=np.float64)
    d = np.asarray(denoised, dtype=np.float64) * test.sum() / np.asarray(train, dtype=np.float64).sum()
    return float(np.mean(test - d * np.log(test + 1e-6)))


class Scores(msgspec.Struct, frozen=True):
    mse: float
    poisson: float
    mse_normalized: float
    poisson_normalized: float
    score: float  # mean of the two normalised scores


class DegenerateSplit(SiaError):
    """The split's controls do not span a range to normalise against: no denoising scores as well
    as perfect denoising (too few cells or counts), so every normalised score would divide by 0."""

    def __init__(self, mw: float, mb: float, pw: float, pb: float) -> None:
        super().__init__(
            f"the cross-validation split cannot rank denoisers: no denoising scores MSE {mw:.4g} / Poisson {pw:.4g}, "
            f"perfect denoising {mb:.4g} / {pb:.4g} (worst must exceed best); the matrix has too few cells or counts "
            f"for molecular cross-validation: use real count data with more cells and genes"
        )


def evaluate(split: Split, denoised: np.ndarray, controls: tuple[float, float, float, float] | None = None) -> Scores:
    """Raw and normalised metrics of ``denoised`` against the split's test counts.

    ``controls`` = (mse worst, mse best, poisson worst, poisson best), computed when None."""
    if denoised.shape != split.train.shape:
        raise ValueError(f"denoised has shape {denoised.shape}, expected {split.train.shape} (cells x kept genes)")
    if not np.all(np.isfinite(denoised)) or (denoised < 0).any():
        raise ValueError("denoised must be finite and non-negative")
    if controls is None:
        controls = control_scores(split)
        # perfect denoising scores itself exactly: no rounding slack to worry about
    mw, mb, pw, pb = controls
    if not (mw > mb and pw > pb):
        raise DegenerateSplit(mw, mb, pw, pb)
    m, p = mse(split.test, denoised), poisson(split.train, split.test, denoised)
    mn = (mw - m) / (mw - mb)
    pn = (pw - p) / (pw - pb)
    return Scores(m, p, mn, pn, (mn + pn) / 2)


def control_scores(split: Split) -> tuple[float, float, float, float]:
    """(mse worst, mse best, poisson worst, poisson best): no denoising and perfect denoising."""
    return (
        mse(split.test, split.train), mse(split.test, split.test),
        poisson(split.train, split.test, split.train), poisson(split.train, split.test, split.test),
    )
