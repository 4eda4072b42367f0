"""Issue 19's TriMul findings 7 and 8, tried again on CPU: the sandbox's copy of the timing
harness imports under `pip install -e .`, and whatever a submission leaves in the result channel
is a typed failure with bounded text, never an exception through the loop."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from sia_engine.sandbox.jail import SandboxResult, run_python
from tasks.trimul import Case, run_submission
from tasks.trimul.task import timed_score

HERE = Path(__file__).resolve().parents[2] / "tasks" / "trimul"
SPEC = {"n": 32, "bs": 1, "dim": 128, "masked": False, "dist": "normal", "seed": 100, "reps": 3}
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def test_the_sandboxs_copy_of_the_harness_imports_without_touching_the_package() -> None:
    """Under an editable install the package is found but unreadable in the sandbox: the copy
    used to try it first and come back `blocked: read .../tasks/__init__.py`."""
    files = {"timing.py": (HERE / "timing.py").read_bytes(), "reference.py": (HERE / "reference.py").read_bytes()}
    r = run_python("import sys, os\nsys.path.insert(0, os.getcwd())\nimport timing\nprint(timing.check.__module__)", files=files, timeout_s=120)
    assert r.status == "ok" and r.blocked == () and r.stdout.strip() == "reference", (r.status, r.blocked, r.stderr[-500:])


def result(raw: bytes | None, status: str = "ok", stderr: str = "") -> SandboxResult:
    return SandboxResult(status, 0, "", stderr, 1.0, outputs={} if raw is None else {"result.json": raw})  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", [b'{"status": "ok", "ref_us": 100.0, "sub_us": 0.0, "reps": 3}', b"not json", b"[1, 2]",
                                 b'{"status": "ok", "ref_us": 100.0}', b'{"status": "ok", "ref_us": 1e6, "sub_us": 1, "reps": 3, "x": 1}',
                                 b'{"status": "ok", "ref_us": 100.0, "sub_us": -1.0, "reps": 3}', b'{"status": "won"}'])
def test_a_result_the_harness_could_not_have_written_is_tampering(raw: bytes) -> None:
    s = timed_score(result(raw), SPEC)
    assert (s.score, s.failure) == (0.0, "tampering") and s.tools[0].outputs["status"] == "tampering"


def test_an_honest_result_scores_its_speedup_and_failures_keep_bounded_text() -> None:
    good = timed_score(result(b'{"status": "ok", "ref_us": 300.0, "sub_us": 100.0, "reps": 3}'), SPEC)
    assert (good.score, good.failure) == (3.0, "none")
    wrong = timed_score(result(json.dumps({"status": "incorrect", "reason": "x" * 100_000}).encode()), SPEC)
    assert (wrong.score, wrong.failure) == (0.0, "content") and len(wrong.tools[0].outputs["reason"]) <= 800
    crashed = timed_score(result(None, "error", "Traceback ...\n" + "y" * 50_000), SPEC)
    assert crashed.failure == "content" and len(crashed.tools[0].outputs["reason"]) <= 800


@needs_triton
def test_a_garbage_output_file_is_tampering_not_a_traceback() -> None:
    code = "def custom_kernel(data):\n    import os\n    open('out0.safetensors', 'wb').write(b'garbage')\n    os._exit(0)\n"
    res, [r] = run_submission(code, [Case(32, 1, 128, False, "normal", 7)])
    assert not r.correct and r.tampered and "not what the harness writes" in r.reason


def test_a_run_that_did_not_end_ok_does_not_score_and_a_swapped_result_file_is_tampering() -> None:
    honest = b'{"status": "ok", "ref_us": 300.0, "sub_us": 100.0, "reps": 3}'
    for status in ("timeout", "blocked", "error"):
        s = timed_score(result(honest, status), SPEC)
        assert (s.score, s.failure) == (0.0, "content"), status
    swapped = SandboxResult("blocked", 0, "", "", 1.0, blocked=("output result.json: not read (a symlink)",))  # type: ignore[arg-type]
    s = timed_score(swapped, SPEC)
    assert (s.score, s.failure) == (0.0, "tampering")
