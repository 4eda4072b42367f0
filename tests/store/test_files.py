"""``store.files``: the one helper every writer of a durable file goes through."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest

from store.files import atomic_write, replace_folder

ROOT = Path(__file__).resolve().parent.parent.parent
HELPER = ROOT / "store" / "files.py"
# file -> why it may rename files itself (none today: every rename goes through store.files)
ALLOWED_RENAMES: dict[str, str] = {}


def _fail(*_: object) -> None:
    raise OSError(5, "simulated I/O error")


@pytest.mark.parametrize("where", ["os.write", "os.fsync", "os.replace"])
def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    target = tmp_path / "heads"
    atomic_write(target, b"old contents")
    monkeypatch.setattr(os, where.split(".")[1], _fail)
    with pytest.raises(OSError, match="simulated"):
        atomic_write(target, b"new contents, never whole")
    monkeypatch.undo()
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["heads"]


def test_it_fsyncs_the_file_and_then_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[tuple[str, bool]] = []  # (what the fd is, whether the target was in place then)
    real_fsync = os.fsync
    target = tmp_path / "sub" / "file.bin"

    def fsync(fd: int) -> None:
        synced.append(("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file", target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(target, b"data")
    assert synced == [("file", False), ("dir", True)]  # the file before the rename, its folder after
    assert target.read_bytes() == b"data"


def test_exclusive_never_replaces_a_file(tmp_path: Path) -> None:
    target = tmp_path / "cp.json"
    atomic_write(target, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        atomic_write(target, b"second", exclusive=True)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["cp.json"]


def test_the_mode_is_the_writers(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "private", b"k")
        atomic_write(tmp_path / "shared", b"k", mode=0o666)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o644


def test_replace_folder_fsyncs_every_file_and_swaps_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tmp_path / "model.tmp", tmp_path / "model"
    (src / "nested").mkdir(parents=True)
    (src / "weights.safetensors").write_bytes(b"w")
    (src / "nested" / "config.json").write_bytes(b"{}")
    dst.mkdir()
    (dst / "stale").write_bytes(b"old")
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"), real_fsync(fd))[1])
    replace_folder(src, dst)
    assert synced.count("file") == 2 and synced.count("dir") == 3  # two files, two folders, then the parent
    assert not src.exists() and sorted(p.name for p in dst.rglob("*")) == ["config.json", "nested", "weights.safetensors"]


def _renames(path: Path) -> list[str]:
    """``os.replace``/``os.rename`` calls and ``.replace``/``.rename`` calls on a path in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("replace", "rename")):
            continue
        owner = node.func.value
        if isinstance(owner, ast.Name) and owner.id == "os":
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} os.{node.func.attr}")
        elif node.func.attr == "rename" or (len(node.args) == 1 and not node.keywords):
            # Path.replace(target) takes one argument; str.replace two, msgspec.structs.replace keywords
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.func.attr}")
    return found


def test_no_file_is_renamed_outside_the_helper() -> None:
    """Every temp-file-and-rename goes through ``store.files``: an AST scan of the project's
    packages finds no ``os.replace``/``os.rename``/``Path.replace``/``Path.rename`` elsewhere."""
    found = [
        hit
        for pkg in ("store", "sia_engine", "replay", "tasks")
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if p != HELPER and str(p.relative_to(ROOT)) not in ALLOWED_RENAMES
        for hit in _renames(p)
    ]
    assert not found, f"write durable files with store.files.atomic_write (or list the exception with its reason): {found}"
