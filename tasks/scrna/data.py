"""Count matrices for scrna-denoise: any ``.h5ad`` of raw integer counts, or the default, scanpy's
bundled ``pbmc68k_reduced`` with its counts recovered (``round(expm1(raw.X) * n_counts / 1e4)``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from sia_engine.errors import SiaError

__all__ = ["InvalidCounts", "DataNotFound", "load_counts", "default_counts", "DEFAULT_DATA"]

DEFAULT_DATA = "scanpy:pbmc68k_reduced"


class DataNotFound(SiaError):
    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"no count data at {what}: {reason}")


class InvalidCounts(SiaError):
    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"{path}: {reason}; scrna-denoise needs raw integer UMI counts (cells x genes) in .X")


def _dense(x: object) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x)


def load_counts(path: str | Path) -> np.ndarray:
    """Dense int64 counts (cells x genes) from an .h5ad file, checked to be raw counts."""
    import anndata

    p = Path(path)
    if str(path) == DEFAULT_DATA:
        return default_counts()
    if p.is_dir():
        raise DataNotFound(str(p), "it is a folder; give the .h5ad file itself")
    if not p.is_file():
        raise DataNotFound(str(p), "the file does not exist")
    try:
        adata = anndata.read_h5ad(p, backed="r")  # the shape first: the matrix is read only if it fits
    except Exception as e:  # noqa: BLE001 - h5py and anndata raise many kinds
        raise InvalidCounts(str(p), f"not a readable .h5ad file ({type(e).__name__}: {e})") from None
    if adata.n_obs * adata.n_vars > _MAX_ENTRIES:
        raise InvalidCounts(str(p), f".X is {adata.n_obs:,} cells x {adata.n_vars:,} genes, over {_MAX_ENTRIES:,} entries: "
                            "subsample it (scrna-denoise works on a dense matrix)")
    try:
        x = _dense(adata.to_memory().X).astype(np.float64, copy=False)
    except MemoryError:
        raise InvalidCounts(str(p), f".X ({adata.n_obs:,} x {adata.n_vars:,}) does not fit in memory as a dense matrix") from None
    except Exception as e:  # noqa: BLE001
        raise InvalidCounts(str(p), f"not a readable .h5ad file ({type(e).__name__}: {e})") from None
    finally:
        if adata.isbacked:
            adata.file.close()
    if x.ndim != 2 or min(x.shape) < 2:
        raise InvalidCounts(str(p), f".X has shape {x.shape}, expected at least 2 cells x 2 genes")
    if not np.all(np.isfinite(x)):
        raise InvalidCounts(str(p), ".X holds NaN or infinite values")
    neg = np.argwhere(x < 0)
    if len(neg):
        i, j = neg[0]
        raise InvalidCounts(str(p), f".X holds negative values ({x[i, j]} at cell {i}, gene {j})")
    frac = np.argwhere(x != np.round(x))
    if len(frac):
        i, j = frac[0]
        raise InvalidCounts(str(p), f".X holds non-integer values ({x[i, j]:.4g} at cell {i}, gene {j}): it looks normalised")
    if x.max() > _MAX_COUNT:
        i, j = np.unravel_index(int(np.argmax(x)), x.shape)
        raise InvalidCounts(str(p), f".X holds a count of {x[i, j]:.4g} (cell {i}, gene {j}), above {_MAX_COUNT:,}: no UMI count is that large")
    if not x.any():
        raise InvalidCounts(str(p), ".X holds no counts (every entry is 0): there is nothing to denoise or score")
    return x.astype(np.int64)


_MAX_ENTRIES = 200_000_000  # cells x genes read dense (1.6 GB as float64)
_MAX_COUNT = 2**31 - 1  # numpy's binomial draws (the cross-validation split) take counts up to this


def data_file(data: str | Path) -> Path:
    """The file that holds ``data`` (scanpy's bundled file for the default): what a sandbox must
    not be able to read, since every split, held-out ones included, is computed from it."""
    if str(data) != DEFAULT_DATA:
        return Path(data)
    spec = importlib.util.find_spec("scanpy")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFound(DEFAULT_DATA, "scanpy is not installed (pip install --no-deps scanpy==1.11.5)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "10x_pbmc68k_reduced.h5ad"


def default_counts() -> np.ndarray:
    """scanpy's bundled pbmc68k_reduced (700 cells x 765 genes), counts recovered from raw.X.

    The file is located inside the installed scanpy wheel without importing scanpy."""
    import anndata

    path = data_file(DEFAULT_DATA)
    if not path.is_file():
        raise DataNotFound(DEFAULT_DATA, f"{path} is missing from the scanpy package")
    import warnings

    with warnings.catch_warnings():  # the 2019 file predates anndata's obsp; harmless
        warnings.simplefilter("ignore", FutureWarning)
        adata = anndata.read_h5ad(path)
    raw = _dense(adata.raw.X).astype(np.float64)
    n_counts = np.asarray(adata.obs["n_counts"], dtype=np.float64)[:, None]
    return np.round(np.expm1(raw) * n_counts / 1e4).astype(np.int64)
