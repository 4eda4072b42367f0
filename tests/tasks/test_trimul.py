"""TriMul: reference, inputs, the tolerance check, and Triton submissions in the sandbox (CPU
interpreter, N=32)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tasks.trimul import Case, check, generate_input, reference, run_submission

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "trimul"
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def test_inputs_are_seeded_with_both_mask_dtypes() -> None:
    x, m, w = generate_input(32, 2, 128, masked=True, dist="cauchy", seed=5)
    x2, m2, _ = generate_input(32, 2, 128, masked=True, dist="cauchy", seed=5)
    assert torch.equal(x, x2) and torch.equal(m, m2)
    assert x.dtype == torch.float32 and x.shape == (2, 32, 32, 128)
    assert m.dtype == torch.int64 and set(m.unique().tolist()) == {0, 1}
    _, ones, _ = generate_input(32, 1, 128, masked=False, dist="normal", seed=5)
    assert ones.dtype == torch.float32 and bool((ones == 1).all())
    assert w["left_proj.weight"].shape == (128, 128) and w["to_out.weight"].shape == (128, 128)


def test_reference_against_a_loop_over_k() -> None:
    x, m, w = generate_input(8, 1, 16, masked=True, dist="normal", seed=0)
    out = reference(x, m, w)
    xn = torch.nn.functional.layer_norm(x, (16,), w["norm.weight"], w["norm.bias"])
    mm = m.unsqueeze(-1).float()
    left = (xn @ w["left_proj.weight"].T) * mm * torch.sigmoid(xn @ w["left_gate.weight"].T)
    right = (xn @ w["right_proj.weight"].T) * mm * torch.sigmoid(xn @ w["right_gate.weight"].T)
    tri = torch.zeros(1, 8, 8, 128)
    for k in range(8):
        tri += left[:, :, k, None, :] * right[:, None, :, k, :]
    tri = torch.nn.functional.layer_norm(tri, (128,), w["to_out_norm.weight"], w["to_out_norm.bias"])
    want = (tri * torch.sigmoid(xn @ w["out_gate.weight"].T)) @ w["to_out.weight"].T
    assert torch.allclose(out, want, atol=1e-4)


def test_check_tolerance_and_special_values() -> None:
    ref = torch.tensor([1.0, -2.0, float("nan"), float("inf")])
    assert check(ref + torch.tensor([0.039, -0.05, 0.0, 0.0]), ref) == (True, "all elements within tolerance")
    ok, why = check(ref + torch.tensor([0.041, 0.0, 0.0, 0.0]), ref)
    assert not ok and why == "1 of 4 elements outside |out - ref| <= 0.02 + 0.02|ref|; first at (0,): 1.041 vs 1"
    assert check(torch.tensor([1.0, -2.0, 0.0, float("inf")]), ref) == (False, "NaN positions differ from the reference")
    assert check(torch.zeros(3), ref)[1] == "shape (3,) != reference shape (4,)"


CASES = [Case(32, 1, 128, False, "normal", 0), Case(32, 1, 128, True, "cauchy", 1)]
CORRECT = (FIXTURES / "correct.py").read_text()


def variant(old: str, new: str) -> str:
    """The correct submission with one change (the change must apply)."""
    assert CORRECT.count(old) == 1
    return CORRECT.replace(old, new)


# stores out[j, i]: every shape still matches, every value is wrong
TRANSPOSED = variant("tl.store(o_ptr + base + oi[:, None] * N + oj[None, :], acc", "tl.store(o_ptr + base + oj[None, :] * N + oi[:, None], acc")
HANGS = variant("def custom_kernel(data):\n", "def custom_kernel(data):\n    while True:\n        pass\n")


@needs_triton
def test_a_correct_triton_kernel_passes_on_cpu_masked_and_unmasked() -> None:
    res, results = run_submission(CORRECT, CASES)
    assert res.status == "ok", res.stderr
    assert [(r.correct, r.reason) for r in results] == [(True, "all elements within tolerance")] * 2


@needs_triton
def test_a_subtly_wrong_kernel_fails() -> None:
    res, results = run_submission(TRANSPOSED, CASES[1:])
    assert res.status == "ok" and not results[0].correct
    assert "elements outside |out - ref| <= 0.02 + 0.02|ref|" in results[0].reason


@needs_triton
def test_a_hanging_kernel_is_killed() -> None:
    res, results = run_submission(HANGS, CASES[:1], timeout_s=8)
    assert res.status == "timeout" and not results[0].correct and results[0].reason.startswith("no output (timeout")


# -- TriMul as a `sia run` task ---------------------------------------------------------------

def test_kernels_are_parsed_from_the_answer_and_the_engine_text_holds_none() -> None:
    from tasks.trimul.task import TriMul, parse_kernel

    assert parse_kernel(f"Here it is:\n```python\n{CORRECT}```\nDone.") == CORRECT.strip() + "\n"
    assert parse_kernel(CORRECT) == CORRECT.strip() + "\n"  # no fence: the whole text
    assert parse_kernel("```python\ndef kernel(data):\n    return data\n```") is None  # no custom_kernel
    assert parse_kernel("```python\ndef custom_kernel(data:\n```") is None  # not Python
    task = TriMul(interpret=True)
    sc = task.scaffold()
    for text in (task.format_hint, sc.system_prompt, sc.output_format, *(e.input for s in ("train", "val", "test") for e in task.episodes(s))):
        assert parse_kernel(text) is None  # the engine never writes a kernel for the model


def test_splits_are_disjoint_shapes_and_test_is_the_ranked_benchmark() -> None:
    from tasks.trimul.reference import RANKED
    from tasks.trimul.task import TriMul

    task = TriMul(interpret=True)
    shapes = {s: [(e.meta["n"], e.meta["bs"], e.meta["dim"]) for e in task.episodes(s)] for s in ("train", "val", "test")}
    assert shapes["test"] == [r[:3] for r in RANKED] and len(shapes["train"]) == 4 and len(shapes["val"]) == 3
    assert not set(shapes["train"]) & set(shapes["val"])
    assert len({e.meta["seed"] for s in ("train", "val", "test") for e in task.episodes(s)}) == 14


@needs_triton
def test_the_task_scores_kernels_in_the_sandbox_interpreted_on_cpu() -> None:
    from tasks.trimul.task import TriMul

    task = TriMul(interpret=True)
    ep = task.episodes("train")[1]  # masked
    good = task.score(ep, f"```python\n{CORRECT}```")
    assert good.score == 1.0 and good.failure == "none" and good.metrics["timed"] == 0.0  # correctness only: never a timing
    assert good.tools[0].outputs["status"] == "ok" and good.tools[0].inputs["episode"]["device"] == "cpu"  # Triton's interpreter
    bad = task.score(ep, TRANSPOSED)
    assert bad.score == 0.0 and bad.failure == "content" and "elements outside" in bad.tools[0].outputs["reason"]
    assert task.score(ep, "I would use tl.dot.") == type(good)(0.0, "format", {"valid": 0.0})


def test_without_a_gpu_the_task_and_the_commands_refuse(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sia_engine.cli.main import main
    from tasks.trimul.task import TaskUnavailable, TriMul

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal is for machines without one")
    with pytest.raises(TaskUnavailable, match="CUDA GPU"):
        TriMul()
    for cmd in (["run", "--task", "trimul"], ["experiment", "--task", "trimul"]):
        r = CliRunner().invoke(main, [*cmd, "--store", str(tmp_path / "s")])
        assert r.exit_code == 2 and "meaningless" in r.output and not (tmp_path / "s").exists()


def test_a_small_model_is_refused_for_a_task_that_needs_kernels() -> None:
    from sia_engine.cli.api import load_agent_model

    class NeedsKernels:
        name = "k"
        requires = ("gpu", "code-model")

    for spec in ("tiny", "smollm2"):
        with pytest.raises(SystemExit) as e:
            load_agent_model(spec, None, None, "cpu", NeedsKernels())
        assert e.value.code == 2
