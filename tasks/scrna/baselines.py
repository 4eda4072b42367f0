"""Reference denoisers in numpy/scipy: no denoising, MAGIC-style diffusion with reversed
normalisation, ALRA-style low-rank completion, and kNN averaging."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tasks.scrna.family import family_denoise, pca_embed

__all__ = ["BASELINES", "no_denoising", "magic", "alra", "knn_average"]


def no_denoising(train: np.ndarray, seed: int = 0) -> np.ndarray:
    return np.asarray(train, dtype=np.float64)


def magic(train: np.ndarray, seed: int = 0) -> np.ndarray:
    """MAGIC-style: library-size normalise, sqrt, PCA (100), kNN diffusion (k=5, t=3), square,
    then reverse the normalisation (multiply back each cell's library size)."""
    return family_denoise(train, normalize=True, transform="sqrt", n_pcs=100, k=5, t=3, rescale=True)


def alra(train: np.ndarray, seed: int = 0, rank: int | None = None) -> np.ndarray:
    """ALRA-style (the sqrt variant OpenProblems ranks): sqrt-normalise, rank-k reconstruction (k from the largest gap in the top
    singular values), per-gene thresholding at the magnitude of the 0.1% quantile, rescaling of
    each gene's non-zeros to the observed mean and sd, original non-zeros restored, reversed
    normalisation."""
    x = np.asarray(train, dtype=np.float64)
    lib = x.sum(axis=1, keepdims=True)
    lib_safe = np.where(lib > 0, lib, 1.0)
    a = np.sqrt(x / lib_safe * 1e4)
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    if rank is None:
        top = s[: min(50, len(s))]
        gaps = top[:-1] - top[1:]
        rank = int(np.argmax(gaps[1:]) + 2) if len(gaps) > 1 else 1
    low = (u[:, :rank] * s[:rank]) @ vt[:rank]
    thresh = np.abs(np.quantile(low, 0.001, axis=0))
    low = np.where(low <= thresh[None, :], 0.0, low)
    nz_a, nz_low = a > 0, low > 0
    for g in range(a.shape[1]):  # match each gene's non-zero mean and sd to the observed ones
        obs, rec = a[nz_a[:, g], g], low[nz_low[:, g], g]
        if len(obs) > 1 and len(rec) > 1 and rec.std() > 0:
            sigma = obs.std() / rec.std()
            mu = obs.mean() - rec.mean() * sigma
            low[nz_low[:, g], g] = np.clip(low[nz_low[:, g], g] * sigma + mu, 0, None)
    restore = nz_a & (low == 0)
    low[restore] = a[restore]
    return low**2 / 1e4 * lib_safe


def knn_average(train: np.ndarray, seed: int = 0, k: int = 10) -> np.ndarray:
    """Each cell's counts averaged with its k nearest neighbours' (PCA of log-normalised counts)."""
    x = np.asarray(train, dtype=np.float64)
    lib = x.sum(axis=1, keepdims=True)
    emb = pca_embed(np.log1p(x / np.where(lib > 0, lib, 1.0) * 1e4), 30)
    sq = np.sum(emb**2, axis=1)
    d2 = sq[:, None] + sq[None, :] - 2 * emb @ emb.T
    idx = np.argsort(d2, axis=1)[:, : k + 1]  # the cell itself and its k neighbours
    out: np.ndarray = x[idx].mean(axis=1)
    return out


BASELINES: dict[str, Callable[..., np.ndarray]] = {
    "no-denoising": no_denoising,
    "magic": magic,
    "alra": alra,
    "knn": knn_average,
}
