"""TriMul timing by the benchmark's rules, for ``bench/bench_trimul_gpu.py`` (a submission file
you trust, timed in this process; the task's scorer runs untrusted ones through ``judge.py``).

For one shape: inputs regenerated on the device (a new seed) before every repetition and, when
``verify``, the timed call's own output checked against the reference; CUDA events around
each call; the first call is a warm-up (compilation, autotuning); at least 3 and at most
``max_reps`` timed repetitions, stopping early once the standard error of the mean is under 0.1%
of it or after ``budget_s`` seconds of timing. Needs CUDA: CPU timings of Triton's interpreter
are never kernel performance.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

# inside the package, or as a plain file beside reference.py (the sandbox's copy). Decided by
# the module's own name, never by trying the package: under `pip install -e .` the package is
# found but unreadable in the sandbox, and the attempt is a refusal (PermissionError), not an ImportError
if TYPE_CHECKING or __name__ != "timing":
    from tasks.trimul.reference import check, generate_input, reference
else:  # pragma: no cover - the sandbox's copy
    from reference import check, generate_input, reference

__all__ = ["Incorrect", "time_shape", "geometric_mean"]


class Incorrect(Exception):
    """The submission's output was wrong on a timed input."""


def time_shape(fn: Callable[[Any], torch.Tensor], n: int, bs: int, dim: int, masked: bool, dist: str, *, max_reps: int = 100,
               verify: bool = True, seed0: int = 1000, budget_s: float = 10.0) -> tuple[float, int]:
    """(mean microseconds per call, repetitions timed) of ``fn`` on the shape."""
    times: list[float] = []
    spent = 0.0
    for rep in range(max_reps + 1):
        x, mask, w = generate_input(n, bs, dim, masked=masked, dist=dist, seed=seed0 + rep, device="cuda")  # type: ignore[arg-type]
        data = (x, mask, w, {"n": n, "bs": bs, "dim": dim, "masked": masked, "dist": dist})
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn(data)
        end.record()
        torch.cuda.synchronize()
        if verify:  # the timed call's own output, on inputs no earlier call saw
            ok, why = check(out, reference(x, mask, w))
            if not ok:
                raise Incorrect(f"incorrect on N={n} bs={bs} dim={dim} masked={masked} {dist} (rep {rep}): {why}")
        if rep == 0:
            continue  # warm-up
        times.append(start.elapsed_time(end) * 1e3)  # microseconds
        spent += times[-1] / 1e6
        if len(times) >= 3:
            mean = statistics.fmean(times)
            sem = statistics.stdev(times) / math.sqrt(len(times))
            if sem / mean < 1e-3 or spent > budget_s:
                break
    return statistics.fmean(times), len(times)


def geometric_mean(xs: list[float]) -> float:
    return math.exp(sum(map(math.log, xs)) / len(xs))
