"""Task suites behind the ``sia_engine.task.Task`` protocol.

Built in now: ``arith`` (a small sum task for the loop). The SIA families (scrna-denoise,
lawbench, trimul) are the next issue.
"""

from __future__ import annotations

from collections.abc import Callable

from sia_engine.errors import SiaError
from sia_engine.task import Task
from tasks.arith import Arith

__all__ = ["TASKS", "get_task", "UnknownTask"]

TASKS: dict[str, Callable[[], Task]] = {"arith": Arith}


class UnknownTask(SiaError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))} (list them with `sia tasks`)")


def get_task(name: str) -> Task:
    try:
        return TASKS[name]()
    except KeyError:
        raise UnknownTask(name) from None
