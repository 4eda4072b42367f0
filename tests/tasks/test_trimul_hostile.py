"""Issue 19's TriMul findings 7 and 8, tried again on CPU: the sandbox's copies of the harnesses
import under `pip install -e .`, and a garbage output file is a typed failure, never an exception.
The scorer's own attacks (finding 6) are in test_trimul_judge.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sia_engine.sandbox.jail import run_python
from tasks.trimul import Case, run_submission

HERE = Path(__file__).resolve().parents[2] / "tasks" / "trimul"
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@pytest.mark.parametrize("module", ["timing", "inside"])
def test_the_sandboxs_copy_of_the_harness_imports_without_touching_the_package(module: str) -> None:
    """Under an editable install the package is found but unreadable in the sandbox: the copy
    used to try it first and come back `blocked: read .../tasks/__init__.py`."""
    files = {f"{module}.py": (HERE / f"{module}.py").read_bytes(), "reference.py": (HERE / "reference.py").read_bytes()}
    code = f"import sys, os\nsys.path.insert(0, os.getcwd())\nimport {module}\nprint({module}.reference.__module__)"
    r = run_python(code, files=files, timeout_s=120)
    assert r.status == "ok" and r.blocked == () and r.stdout.strip() == "reference", (r.status, r.blocked, r.stderr[-500:])


@needs_triton
def test_a_garbage_output_file_is_tampering_not_a_traceback() -> None:
    code = "def custom_kernel(data):\n    import os\n    open('out0.safetensors', 'wb').write(b'garbage')\n    os._exit(0)\n"
    res, [r] = run_submission(code, [Case(32, 1, 128, False, "normal", 7)])
    assert not r.correct and r.tampered and "not what the harness writes" in r.reason
