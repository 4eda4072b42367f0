"""The data pin: what a task reads, hashed as the task reads it (through links), each folder once,
and data that cannot be read is a typed error naming it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sia_engine.errors import DataUnreadable
from sia_engine.loop.pins import data_pin
from tests.loop_helpers import TASK


class Reads(type(TASK)):  # type: ignore[misc]
    def __init__(self, files: dict[str, Path]) -> None:
        super().__init__()
        self.files = files

    def data_files(self) -> dict[str, Path]:
        return self.files


def names(pin) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {f.name: f.sha256 for f in pin.files}


def test_a_folder_linked_into_the_data_is_pinned_and_a_change_inside_it_shows(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "counts.csv").write_text("1,2,3")
    data = tmp_path / "data"
    data.mkdir()
    (data / "own.txt").write_text("x")
    (data / "linked").symlink_to(real)  # the task reads data/linked/counts.csv through the link
    (data / "loop").symlink_to(data)  # a link back up: no loop, no second copy
    (data / "proc").symlink_to("/proc")  # the kernel's trees: never walked (/proc/kcore, /proc/kmsg)
    (data / "kcore").symlink_to("/proc/self/status")
    before = names(data_pin(Reads({"data": data})))
    assert sorted(before) == ["data/linked/counts.csv", "data/own.txt"], before
    (real / "counts.csv").write_text("1,2,4")
    assert names(data_pin(Reads({"data": data})))["data/linked/counts.csv"] != before["data/linked/counts.csv"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file whatever its mode: run as another user to see the refusal")
def test_a_file_this_user_cannot_read_is_a_typed_error_naming_it(tmp_path: Path) -> None:
    f = tmp_path / "secret.h5ad"
    f.write_text("x")
    f.chmod(0)
    with pytest.raises(DataUnreadable, match="secret.h5ad"):
        data_pin(Reads({"secret.h5ad": f}))


def test_a_read_that_fails_is_a_typed_error_naming_the_file_even_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root (CI, GPU hosts) permissions do not refuse; the read failing (EIO, EACCES on a
    network mount) is the same path."""
    import builtins

    f = tmp_path / "counts.h5ad"
    f.write_text("x")
    real_open = builtins.open

    def refusing(path, *a, **k):  # type: ignore[no-untyped-def]
        if str(path) == str(f):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", refusing)
    with pytest.raises(DataUnreadable, match="counts.h5ad") as exc:
        data_pin(Reads({"counts.h5ad": f}))
    assert "Permission denied" in str(exc.value) and "nothing was recorded" in str(exc.value)


def test_a_folder_that_cannot_be_listed_is_a_typed_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "a.txt").write_text("a")
    real_scandir = os.scandir

    def refusing(path):  # type: ignore[no-untyped-def]
        if str(path).endswith("sub"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    with pytest.raises(DataUnreadable, match="sub"):
        data_pin(Reads({"data": data}))
