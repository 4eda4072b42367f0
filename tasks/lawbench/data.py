"""Reading the LawBench folder layout: ``<dir>/zero_shot/<task>.json`` (lists of
``{"instruction", "question", "answer"}``) and published prediction folders
``<dir>/<model>/<task>.json`` (``{"<i>": {"origin_prompt", "prediction", "refr"}}``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sia_engine.errors import SiaError

__all__ = ["LawBenchDataError", "load_items", "load_predictions", "prediction_sets"]


class LawBenchDataError(SiaError):
    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"{path}: {reason}")


def _read(path: Path) -> Any:
    if path.is_dir():
        raise LawBenchDataError(str(path), "a folder, not a JSON file")
    if not path.is_file():
        raise LawBenchDataError(str(path), "no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LawBenchDataError(str(path), f"not UTF-8 JSON ({e})") from None
    except RecursionError:
        raise LawBenchDataError(str(path), "JSON nested too deep to read (LawBench files are two levels deep)") from None


def load_items(folder: str | Path, task: str) -> list[dict[str, str]]:
    """The items of ``task`` (e.g. "3-3") under ``folder/zero_shot``."""
    data = _read(Path(folder) / "zero_shot" / f"{task}.json")
    if not isinstance(data, list) or not all(isinstance(x, dict) and {"instruction", "question", "answer"} <= set(x) for x in data):
        raise LawBenchDataError(str(Path(folder) / "zero_shot" / f"{task}.json"), "expected a list of {instruction, question, answer}")
    return data


def load_predictions(path: str | Path) -> list[tuple[str, str, str]]:
    """(prompt text, prediction, reference) for each item of a published prediction file, in order."""
    data = _read(Path(path))
    if not isinstance(data, dict):
        raise LawBenchDataError(str(path), 'expected {"0": {"origin_prompt", "prediction", "refr"}, ...}')
    if not data:
        raise LawBenchDataError(str(path), "the file holds no items: there is nothing to score")
    out = []
    for i in range(len(data)):
        item = data.get(str(i))
        if not isinstance(item, dict) or not {"prediction", "refr"} <= set(item):
            raise LawBenchDataError(str(path), f'item "{i}" is missing or lacks prediction/refr')
        for field in ("prediction", "refr"):
            if not isinstance(item[field], (str, int, float)) or isinstance(item[field], bool):
                raise LawBenchDataError(str(path), f'item "{i}" has {field} = {item[field]!r}; expected text')
        prompt = item.get("origin_prompt", "")
        if isinstance(prompt, list):  # OpenCompass chat format: [{"role", "prompt"}]
            prompt = "\n".join(str(p.get("prompt", "")) for p in prompt if isinstance(p, dict))
        out.append((str(prompt), str(item["prediction"]), str(item["refr"])))
    return out


_TASK_NAME = re.compile(r"[0-9]+-[0-9]+")


def prediction_sets(folder: str | Path) -> dict[str, dict[str, Path]]:
    """{model: {task: file}} for every model folder under ``folder`` (or ``folder`` itself when
    it holds the task files directly)."""
    root = Path(folder)
    if not root.is_dir():
        raise LawBenchDataError(str(root), "not a folder of prediction files")
    def tasks_in(d: Path) -> dict[str, Path]:  # LawBench's files are named <level>-<n>.json
        return {p.stem: p for p in sorted(d.glob("*.json")) if _TASK_NAME.fullmatch(p.stem)}
    here = tasks_in(root)
    if here:
        return {root.name: here}
    return {d.name: t for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".") and (t := tasks_in(d))}
