"""Tasks found through entry points, the way pytest and ``llm`` find their plugins.

A package adds a task by declaring, in its ``pyproject.toml``::

    [project.entry-points."sia_engine.tasks"]
    my-task = "my_package.module:MyTask"

``MyTask`` is a class following ``sia_engine.loop.task.Task``; its constructor takes keyword options
(``data``, ``protect``) as far as it wants them. ``description`` and ``data_help`` class
attributes describe it in ``sia tasks``. The engine imports no concrete task.
"""

from __future__ import annotations

import inspect
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from sia_engine.errors import SiaError
from sia_engine.loop.task import Task

__all__ = ["GROUP", "UnknownTask", "task_names", "task_info", "get_task"]

GROUP = "sia_engine.tasks"


class UnknownTask(SiaError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(f"unknown task {name!r}; available: {', '.join(known) or 'none'} (list them with `sia tasks`)")


def _entries() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def task_names() -> list[str]:
    return sorted(_entries())


def task_info() -> list[dict[str, str]]:
    """Name, description and the data each registered task needs (classes loaded, nothing built)."""
    rows = []
    for name, ep in sorted(_entries().items()):
        cls = ep.load()
        rows.append({"name": name, "description": str(getattr(cls, "description", "")),
                     "data": str(getattr(cls, "data_help", "")), "provider": ep.value})
    return rows


def get_task(name: str, **options: Any) -> Task:
    """The task ``name`` built with the ``options`` its constructor accepts (None values dropped)."""
    entries = _entries()
    if name not in entries:
        raise UnknownTask(name, sorted(entries))
    cls = entries[name].load()
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in options.items() if v is not None and (takes_any or k in params)}
    task: Task = cls(**kwargs)
    return task
