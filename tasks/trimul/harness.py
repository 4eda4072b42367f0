"""Run a TriMul kernel submission (Triton source defining ``custom_kernel(data)``) in the
sandbox on seeded cases, and check each output against the reference: a correctness check of
a kernel on known cases (tests, ``bench/gpu_sandbox_check.sh``). The task's scorer does not use
it: its inputs are known in advance, so a scored submission goes through ``judge.py`` instead.

On a CPU the sandbox sets ``TRITON_INTERPRET=1`` before anything imports Triton, so kernels run
in Triton's interpreter: correctness on small shapes only, never a timing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

import msgspec
import safetensors.torch
import torch

from sia_engine.sandbox.jail import SandboxResult, run_python
from tasks.trimul.reference import check, generate_input, reference

__all__ = ["Case", "CaseResult", "run_submission"]

_MAIN = '''
import json, os, sys
import safetensors.torch
import torch
sys.path.insert(0, os.getcwd())
import submission  # imported after TRITON_INTERPRET is in the environment

# on a GPU (not Triton's interpreter) the inputs go to the device, as the benchmark hands them
device = "cuda" if os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available() else "cpu"
for i, case in enumerate(json.load(open("cases.json"))):
    data = safetensors.torch.load_file(f"in{i}.safetensors", device=device)
    x, mask = data.pop("x"), data.pop("mask")
    out = submission.custom_kernel((x, mask, data, case))
    safetensors.torch.save_file({"out": out.detach().float().contiguous().cpu()}, f"out{i}.safetensors")
    print(f"case {i} done", flush=True)
'''


class Case(msgspec.Struct, frozen=True):
    n: int
    bs: int
    dim: int
    masked: bool
    dist: Literal["normal", "cauchy"]
    seed: int


class CaseResult(msgspec.Struct, frozen=True):
    case: Case
    correct: bool
    reason: str
    tampered: bool = False  # the output file is not what the harness writes (the submission wrote it)


def run_submission(
    source: str,
    cases: Sequence[Case],
    *,
    interpret: bool = True,
    timeout_s: float = 300.0,
    memory_mb: int = 16384,
    protect: Sequence[str] = (),
) -> tuple[SandboxResult, list[CaseResult]]:
    files = {"submission.py": source.encode(), "cases.json": json.dumps([msgspec.to_builtins(c) for c in cases]).encode()}
    refs = []
    for i, c in enumerate(cases):
        x, mask, w = generate_input(c.n, c.bs, c.dim, masked=c.masked, dist=c.dist, seed=c.seed)
        files[f"in{i}.safetensors"] = safetensors.torch.save({"x": x, "mask": mask, **w})
        refs.append(reference(x, mask, w))
    env = {"TRITON_INTERPRET": "1"} if interpret else {}
    res = run_python(_MAIN, files=files, outputs=[f"out{i}.safetensors" for i in range(len(cases))], timeout_s=timeout_s,
                     memory_mb=memory_mb, protect=protect, env=env, devices=() if interpret else ("gpu",),
                     max_output_bytes=max(4 * c.bs * c.n * c.n * c.dim for c in cases) + (1 << 12))  # a float32 output and its header
    results = []
    for i, (c, ref) in enumerate(zip(cases, refs, strict=True)):
        name = f"out{i}.safetensors"
        if name not in res.outputs:
            last = res.stderr.strip().splitlines()[-1][-800:] if res.stderr.strip() else "no error text"
            results.append(CaseResult(c, False, f"no output ({res.status}: {last})", tampered=any(b.startswith(f"output {name}: not") for b in res.blocked)))  # a link or not a file: not its size
            continue
        results.append(_checked(c, res.outputs[name], ref))
    return res, results


def _checked(case: Case, data: bytes, ref: torch.Tensor) -> CaseResult:
    """One case's output against the reference; an output file the harness could not have written
    (not safetensors, no ``out`` tensor) is a tampered case, never an exception."""
    try:
        out = safetensors.torch.load(data)["out"]
    except Exception as e:  # noqa: BLE001 - whatever the bytes make the reader raise (SafetensorError, KeyError, ...)
        return CaseResult(case, False, f"the output file is not what the harness writes ({type(e).__name__})", tampered=True)
    ok, why = check(out, ref)
    return CaseResult(case, ok, why)
