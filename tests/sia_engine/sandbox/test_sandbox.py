"""The sandbox for agent-written code: time, memory and write limits, all recorded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sia_engine.sandbox.jail import landlock_available, run_python


def test_ok_run_with_outputs() -> None:
    r = run_python("import sys; print('out'); print('err', file=sys.stderr); open('res.txt', 'w').write(open('in.txt').read() * 2)",
                   files={"in.txt": b"ab"}, outputs=["res.txt", "missing.txt"])
    assert (r.status, r.exit_code, r.stdout, r.stderr) == ("ok", 0, "out\n", "err\n")
    assert r.outputs == {"res.txt": b"abab"}


def test_failure_is_recorded() -> None:
    r = run_python("raise ValueError('bad denoiser')")
    assert r.status == "error" and r.exit_code == 1 and "ValueError: bad denoiser" in r.stderr


def test_infinite_loop_is_killed() -> None:
    r = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert r.status == "timeout" and r.exit_code is None and 1.0 <= r.wall_s < 10


def test_memory_bomb_fails_cleanly() -> None:
    r = run_python("x = bytearray(50 * 1024**3)", memory_mb=256)
    assert r.status == "memory" and "MemoryError" in r.stderr


def test_writing_into_the_store_is_blocked_and_recorded(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "log.duckdb").write_bytes(b"precious")
    target = store / "log.duckdb"
    for code in (f"open({str(target)!r}, 'w').write('x')", f"import os; os.remove({str(target)!r})",
                 f"import os; os.rename({str(target)!r}, 'stolen')", f"import shutil; shutil.rmtree({str(store)!r})"):
        r = run_python(code, protect=[store])
        assert r.status == "blocked", code
        assert r.blocked and all(b.startswith(f"write (protected) {store}") for b in r.blocked), r.blocked
        assert target.read_bytes() == b"precious"


@pytest.mark.skipif(not landlock_available(), reason="the kernel has no Landlock: only the audit hook guards writes")
def test_landlock_stops_what_the_hook_cannot_see(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    code = f"import ctypes\nfd = ctypes.CDLL(None).open({(str(store) + '/x').encode()!r}, 0o101, 0o644)\nprint(fd)"
    r = run_python(code, protect=[store])
    assert r.landlock and r.status == "ok" and r.stdout.strip() == "-1"
    assert os.listdir(store) == []
    r = run_python(f"open({str(tmp_path / 'outside.txt')!r}, 'w')")
    assert r.status == "blocked" and r.blocked == (f"write {tmp_path / 'outside.txt'}",) and not (tmp_path / "outside.txt").exists()
