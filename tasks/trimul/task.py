"""TriMul as a ``sia run`` task: the model writes a Triton kernel module, which runs in the
sandbox while a judge outside it (``judge.py``) asks for each call, checks the outputs against
the reference it computes itself, and bounds the harness's timings with its own clock.

An episode is one shape: the reference and then the submission are called on fresh inputs from
seeds the judge keeps (``reps`` timed calls each, after a warm-up); the score is the speed-up
over the reference (0 when the submission fails, is wrong anywhere it was checked, or forged
anything the judge can see: ``tampering``). Splits: train = the four
smaller test shapes, val = the three larger, test = the 7 ranked benchmark shapes (the
benchmark's own score is the geometric mean of those times; ``bench/bench_trimul_gpu.py``
prints it for any submission file).

It needs a CUDA GPU: on a machine without one, building the task raises ``TaskUnavailable``
(timings of Triton's CPU interpreter would be meaningless numbers). ``TriMul(interpret=True)``
runs in the interpreter for tests: correctness on N=32 only, score 1 or 0, never a timing.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import re
import secrets
from pathlib import Path
from typing import Any, Literal

from sia_engine.domain.scaffold import Decoding, Scaffold
from sia_engine.errors import SiaError
from sia_engine.loop.task import Episode, Score, chat_messages
from sia_engine.models.protocol import Message
from sia_engine.sandbox.jail import run_python
from tasks.trimul.judge import Judge, Plan
from tasks.trimul.reference import HIDDEN, RANKED, TEST_SHAPES
from tasks.trimul.reference import reference as reference_fn

__all__ = ["TriMul", "TaskUnavailable", "parse_kernel"]

_HERE = Path(__file__).resolve().parent
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)

# the sandbox's main: the harness, which does what the judge asks over the channel
_MAIN = "import os, sys\nsys.path.insert(0, os.getcwd())\nimport inside\ninside.main()\n"


class TaskUnavailable(SiaError):
    """The task cannot give meaningful scores on this machine (what it needs is said)."""


def parse_kernel(output: str) -> str | None:
    """The submission's source: the last fenced block (or the whole text) when it parses as
    Python and defines ``custom_kernel``; else None."""
    blocks = _FENCE.findall(output)
    src = (blocks[-1] if blocks else output).strip()
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return None
    if not any(isinstance(n, ast.FunctionDef) and n.name == "custom_kernel" for n in tree.body):
        return None
    return src + "\n"


def _shape_text(n: int, bs: int, dim: int, masked: bool, dist: str) -> str:
    mask = "an int64 0/1 mask" if masked else "a float32 mask of ones"
    return f"Shape: N={n}, bs={bs}, dim={dim}, {mask}, x drawn from a {dist} distribution. Write the kernel module."


class TriMul:
    name = "trimul"
    description = "TriMul (GPU MODE bioml/trimul): a Triton kernel for AlphaFold's triangle update; needs a CUDA GPU and a model that writes Triton"
    data_help = "no data: inputs are drawn from seeds, on the GPU"
    requires = ("gpu", "code-model")  # `sia run` refuses a model that cannot write kernels (tiny, smollm2)
    concurrent_scoring = False  # one GPU: timings of concurrent runs would disturb each other
    # the shape of an answer, never one: parse_kernel(format_hint) is None
    format_hint = ("Answer with one Python module in a ```python block: imports (torch, triton, triton.language as tl), "
                   "@triton.jit kernels, and a function named custom_kernel that takes data = (x, mask, weights, config) and "
                   "returns the output tensor of shape [bs, N, N, dim].")
    answer_prefix = ""

    def __init__(self, *, protect: tuple[str, ...] = (), interpret: bool | None = None, reps: int = 10, timeout_s: float = 300.0,
                 allowance_us: float | None = None, secret: bytes | None = None) -> None:
        if reps < 1:
            raise ValueError(f"reps must be at least 1 (got {reps})")
        if interpret is None:
            import torch

            if not torch.cuda.is_available():
                raise TaskUnavailable("task trimul times Triton kernels on a CUDA GPU and this machine has none: its scores here "
                                      "would be meaningless. Run it where `torch.cuda.is_available()` is true, with a model that "
                                      "writes Triton (--openai-url, or --model FOLDER)")
            interpret = False
        self.interpret = interpret
        self.protect = protect
        self.reps = reps
        self.timeout_s = timeout_s
        # how much unexplained time per call the judge lets pass: on a CPU, scheduling noise is milliseconds
        self.allowance_us = allowance_us if allowance_us is not None else (100_000.0 if interpret else 200.0)
        self._key = secret if secret is not None else secrets.token_bytes(32)  # the judge's: never enters the sandbox
        self._cache: dict[tuple[str, str], Score] = {}
        self._scope = ""

    def _shapes(self, split: Literal["train", "val", "test"]) -> list[tuple[int, int, int, bool, str]]:
        if split == "test":
            return list(RANKED)
        chosen = TEST_SHAPES[:4] if split == "train" else TEST_SHAPES[4:]
        return [(n, bs, dim, k % 2 == 1, "cauchy" if k % 3 == 2 else "normal") for k, (n, bs, dim) in enumerate(chosen)]

    def episodes(self, split: Literal["train", "val", "test"]) -> list[Episode]:
        base = {"train": 100, "val": 200, "test": 300}[split]
        return [Episode(id=f"{split}-{k}", split=split, input=_shape_text(*s),
                        meta={"n": s[0], "bs": s[1], "dim": s[2], "masked": s[3], "dist": s[4], "seed": base + 10 * k})
                for k, s in enumerate(self._shapes(split))]

    def scaffold(self) -> Scaffold:
        return Scaffold(
            system_prompt=(
                "You write fast GPU kernels in Triton. Implement TriMul, AlphaFold's outgoing triangle multiplicative "
                f"update, as this PyTorch reference defines it (H = {HIDDEN}):\n\n```python\n{inspect.getsource(reference_fn)}```\n"
                "Inputs are float32 on the GPU: x [bs, N, N, dim], mask [bs, N, N], weights a dict of tensors with the "
                "reference's names. Your output must match the reference within |out - ref| <= 2e-2 + 2e-2 |ref|; "
                "it is timed on the given shape and scored by its speed-up over the reference."
            ),
            output_format=self.format_hint,
            decoding=Decoding(temperature=0.7, max_new_tokens=2048),
        )

    def messages(self, scaffold: Scaffold, episode: Episode) -> tuple[Message, ...]:
        return chat_messages(scaffold, episode.input)

    def parse_answer(self, output: str) -> Any | None:
        return parse_kernel(output)

    def reference_baselines(self, split: Literal["train", "val", "test"]) -> dict[str, float]:
        """The PyTorch reference is the unit of the score (a speed-up of 1 by definition)."""
        return {} if self.interpret else {"pytorch-reference": 1.0}

    def cache_scope(self, scope: str) -> None:
        """One cache per scope (``sia_engine.loop.task.ScopesCache``): a new scope starts empty."""
        if scope != self._scope:
            self._scope, self._cache = scope, {}

    def score(self, episode: Episode, output: str) -> Score:
        src = parse_kernel(output)
        if src is None:
            return Score(0.0, "format", {"valid": 0.0})
        key = (episode.id, hashlib.sha256(src.encode()).hexdigest())
        if key not in self._cache:
            self._cache[key] = self._judged(episode, src)
        return self._cache[key]

    def _judged(self, episode: Episode, src: str) -> Score:
        """The submission run in the sandbox, driven and checked by a ``Judge`` outside it: on a GPU
        on the episode's shape, timed; in Triton's interpreter on N=32, correctness only."""
        m = episode.meta
        n, bs, dim = (32, 1, 128) if self.interpret else (int(m["n"]), int(m["bs"]), int(m["dim"]))
        plan = Plan(n=n, bs=bs, dim=dim, masked=bool(m["masked"]), dist=str(m["dist"]), device="cpu" if self.interpret else "cuda",
                    key=self._key, salt=f"{episode.id}|{hashlib.sha256(src.encode()).hexdigest()}",
                    reps=min(self.reps, 2) if self.interpret else self.reps,
                    allowance_us=self.allowance_us)
        judge = Judge(plan)
        out_bytes = 4 * plan.numel()
        files = {"submission.py": src.encode(), "episode.json": json.dumps(plan.public()).encode(),
                 "reference.py": (_HERE / "reference.py").read_bytes(), "inside.py": (_HERE / "inside.py").read_bytes()}
        res = run_python(_MAIN, files=files, outputs=["full.safetensors"], talk=judge.talk, timeout_s=self.timeout_s, protect=self.protect,
                         env={"TRITON_INTERPRET": "1"} if self.interpret else {}, devices=() if self.interpret else ("gpu",),
                         max_output_bytes=out_bytes + (1 << 12), max_file_bytes=out_bytes + (1 << 20), disk_mb=2048 + (out_bytes >> 20))
        return judge.verdict(res)
