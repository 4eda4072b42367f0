"""Task suites behind the ``sia_engine.task.Task`` protocol.

``arith`` (a small built-in sum task), ``scrna-denoise`` (OpenProblems v1 denoising, run in the
sandbox) and ``lawbench-charge`` (LawBench 3-3 single-label charges). TriMul's reference and
sandboxed kernel checks live in ``tasks.trimul``; LawBench's 20 scorers in ``tasks.lawbench``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sia_engine.errors import SiaError
from sia_engine.task import Task
from tasks.arith import Arith

__all__ = ["TASKS", "DATA", "DESCRIPTIONS", "get_task", "UnknownTask"]


def _scrna(**options: Any) -> Task:
    from tasks.scrna import ScrnaDenoise

    return ScrnaDenoise(**options)


def _charge(**options: Any) -> Task:
    from tasks.lawbench.charge import LawBenchCharge

    return LawBenchCharge(**options)


TASKS: dict[str, Callable[..., Task]] = {"arith": lambda **_: Arith(), "lawbench-charge": _charge, "scrna-denoise": _scrna}
DATA = {
    "arith": "built in",
    "lawbench-charge": "--data LAWBENCH_FOLDER with zero_shot/3-3.json (the LawBench layout)",
    "scrna-denoise": "--data FILE.h5ad of raw integer counts; default scanpy's bundled pbmc68k_reduced (pip install --no-deps scanpy==1.11.5)",
}
DESCRIPTIONS = {
    "arith": "sum of two digits, answer is the number alone (built-in, 100 items)",
    "lawbench-charge": "LawBench 3-3 single-label charge classification, strict accuracy",
    "scrna-denoise": "scRNA-seq denoising (OpenProblems v1 metrics, molecular cross-validation), agent-configured denoiser run in the sandbox",
}


class UnknownTask(SiaError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))} (list them with `sia tasks`)")


def get_task(name: str, **options: Any) -> Task:
    """The task ``name``; ``options`` (data=..., protect=...) go to tasks that take them."""
    if name not in TASKS:
        raise UnknownTask(name)
    return TASKS[name](**{k: v for k, v in options.items() if v is not None})
