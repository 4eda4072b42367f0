"""A small family of denoisers that the agent configures: library-size normalisation, a
variance-stabilising transform, PCA, a kNN graph with an adaptive Gaussian kernel, ``t`` steps
of diffusion (MAGIC-style), the inverse transform, reversed normalisation, and a clip of small
values. numpy only: this file's source is what runs in the sandbox.
"""

from __future__ import annotations

import numpy as np

RANGES = {
    "n_pcs": (2, 100),
    "k": (2, 50),
    "t": (0, 8),
    "clip": (0.0, 5.0),
}
TRANSFORMS = ("sqrt", "log", "none")


def pca_embed(z: np.ndarray, n_pcs: int) -> np.ndarray:
    """Cells x n_pcs principal components of ``z`` (cells x genes), via the cells' Gram matrix."""
    zc = z - z.mean(axis=0)
    gram = zc @ zc.T  # [cells, cells]
    vals, vecs = np.linalg.eigh(gram)
    order = np.argsort(vals)[::-1][: max(1, min(n_pcs, zc.shape[0] - 1))]
    emb: np.ndarray = vecs[:, order] * np.sqrt(np.clip(vals[order], 0, None))
    return emb


def diffusion_operator(emb: np.ndarray, k: int) -> np.ndarray:
    """Row-stochastic [cells, cells] kNN affinities; bandwidth = distance to the k-th neighbour."""
    sq = np.sum(emb**2, axis=1)
    d2 = np.clip(sq[:, None] + sq[None, :] - 2 * emb @ emb.T, 0, None)
    k = max(1, min(k, emb.shape[0] - 1))
    kth = np.sqrt(np.partition(d2, k, axis=1)[:, k])
    sigma = np.where(kth > 0, kth, 1.0)
    w = np.exp(-d2 / (sigma[:, None] * sigma[None, :]))
    cut = np.sqrt(np.partition(d2, k, axis=1)[:, k : k + 1])
    w = np.where(np.sqrt(d2) <= 3 * cut, w, 0.0)  # keep a local neighbourhood
    w = (w + w.T) / 2
    op: np.ndarray = w / w.sum(axis=1, keepdims=True)
    return op


def family_denoise(train: np.ndarray, normalize: bool = True, transform: str = "sqrt", n_pcs: int = 30, k: int = 10, t: int = 3,
                   rescale: bool = True, clip: float = 0.0) -> np.ndarray:
    x = np.asarray(train, dtype=np.float64)
    lib = x.sum(axis=1, keepdims=True)
    lib_safe = np.where(lib > 0, lib, 1.0)
    scale = float(np.median(lib[lib > 0])) if (lib > 0).any() else 1.0
    y = x / lib_safe * scale if normalize else x
    if transform == "sqrt":
        z = np.sqrt(y)
    elif transform == "log":
        z = np.log1p(y)
    else:
        z = y
    if t > 0:
        op = diffusion_operator(pca_embed(z, n_pcs), k)
        for _ in range(int(t)):
            z = op @ z
    if transform == "sqrt":
        y = z**2
    elif transform == "log":
        y = np.expm1(z)
    else:
        y = z
    y = np.clip(y, 0, None)
    if normalize and rescale:
        y = y / scale * lib_safe
    if clip > 0:
        y = np.where(y < clip, 0.0, y)
    return y
