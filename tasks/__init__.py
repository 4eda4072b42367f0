"""Task suites behind the ``sia_engine.loop.task.Task`` protocol.

``arith`` (a small built-in sum task), ``scrna-denoise`` (OpenProblems v1 denoising, run in the
sandbox) and ``lawbench-charge`` (LawBench 3-3 single-label charges). TriMul's reference and
sandboxed kernel checks live in ``tasks.trimul``; LawBench's 20 scorers in ``tasks.lawbench``.
"""

from __future__ import annotations

from typing import Any

from sia_engine.loop.registry import UnknownTask, task_info, task_names
from sia_engine.loop.registry import get_task as _get_task
from sia_engine.loop.task import Task

__all__ = ["TASKS", "DATA", "DESCRIPTIONS", "get_task", "UnknownTask"]


def get_task(name: str, **options: Any) -> Task:
    """The task ``name`` (found through the ``sia_engine.tasks`` entry points); ``options``
    (data=..., protect=...) go to tasks that take them."""
    return _get_task(name, **options)


def __getattr__(name: str) -> Any:
    """``TASKS``, ``DATA`` and ``DESCRIPTIONS``, read from the registered tasks."""
    if name == "TASKS":
        return task_names()
    if name in ("DATA", "DESCRIPTIONS"):
        key = "data" if name == "DATA" else "description"
        return {row["name"]: row[key] for row in task_info()}
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")
