"""TriMul as a ``sia run`` task: the model writes a Triton kernel module, the sandbox checks it
against the reference and times it on a GPU by the benchmark's rules (``timing.py``).

An episode is one shape: the submission's output is checked on that shape's seeded inputs
before every timed repetition, and its score is the speed-up over the PyTorch reference timed in
the same sandboxed process (0 when it fails or is wrong anywhere). Splits: train = the four
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
import math
import re
from pathlib import Path
from typing import Any, Literal

import msgspec

from sia_engine.domain.payloads import ToolCall
from sia_engine.domain.scaffold import Decoding, Scaffold
from sia_engine.errors import SiaError
from sia_engine.loop.task import Episode, Failure, Score, chat_messages
from sia_engine.models.protocol import Message
from sia_engine.sandbox.jail import SandboxResult, run_python
from tasks.trimul.harness import Case, run_submission
from tasks.trimul.reference import HIDDEN, RANKED, TEST_SHAPES
from tasks.trimul.reference import reference as reference_fn

__all__ = ["TriMul", "TaskUnavailable", "parse_kernel", "TimedResult", "timed_score"]

_HERE = Path(__file__).resolve().parent
_MAX_RESULT = 1 << 16  # bytes of result.json read back (the harness writes a few hundred)
_MAX_REASON = 800  # characters of an error's text kept in the tool event
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)

_MAIN = '''
import json, os, sys
sys.path.insert(0, os.getcwd())
import torch
import reference, timing
spec = json.load(open("episode.json"))
shape = (spec["n"], spec["bs"], spec["dim"], spec["masked"], spec["dist"])
try:
    import submission
    fn = submission.custom_kernel
except BaseException as e:
    out = {"status": "import", "reason": repr(e)[-800:]}
else:
    try:
        ref_us, _ = timing.time_shape(lambda d: reference.reference(*d[:3]), *shape, max_reps=spec["reps"], verify=False, seed0=spec["seed"])
        sub_us, reps = timing.time_shape(fn, *shape, max_reps=spec["reps"], verify=True, seed0=spec["seed"])
        out = {"status": "ok", "ref_us": ref_us, "sub_us": sub_us, "reps": reps}
    except timing.Incorrect as e:
        out = {"status": "incorrect", "reason": str(e)[-800:]}
    except BaseException as e:
        out = {"status": "error", "reason": repr(e)[-800:]}
json.dump(out, open("result.json", "w"))
'''


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

    def __init__(self, *, protect: tuple[str, ...] = (), interpret: bool | None = None, reps: int = 10, timeout_s: float = 300.0) -> None:
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
        self._cache: dict[tuple[str, str], Score] = {}

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

    def score(self, episode: Episode, output: str) -> Score:
        src = parse_kernel(output)
        if src is None:
            return Score(0.0, "format", {"valid": 0.0})
        key = (episode.id, hashlib.sha256(src.encode()).hexdigest())
        if key not in self._cache:
            self._cache[key] = self._interpreted(episode, src) if self.interpret else self._timed(episode, src)
        return self._cache[key]

    def _interpreted(self, episode: Episode, src: str) -> Score:
        m = episode.meta
        case = Case(n=32, bs=1, dim=128, masked=bool(m["masked"]), dist=m["dist"], seed=int(m["seed"]))
        res, results = run_submission(src, [case], interpret=True, timeout_s=self.timeout_s, protect=self.protect)
        ok = all(r.correct for r in results)
        failure: Failure = "none" if ok else ("tampering" if any(r.tampered for r in results) else "content")
        call = ToolCall(name="sandbox", inputs={"case": [32, 1, 128, case.masked, case.dist], "interpret": True},
                        outputs={"status": res.status, "correct": ok, "reason": results[0].reason[-_MAX_REASON:], "stderr": res.stderr[-2000:],
                            "isolation": list(res.isolation)})
        return Score(1.0 if ok else 0.0, failure, {"valid": 1.0, "correct": float(ok), "timed": 0.0}, (call,))

    def _timed(self, episode: Episode, src: str) -> Score:
        m = episode.meta
        spec = {**{k: m[k] for k in ("n", "bs", "dim", "masked", "dist", "seed")}, "reps": self.reps}
        files = {"submission.py": src.encode(), "episode.json": json.dumps(spec).encode(),
                 "reference.py": (_HERE / "reference.py").read_bytes(), "timing.py": (_HERE / "timing.py").read_bytes()}
        res = run_python(_MAIN, files=files, outputs=["result.json"], timeout_s=self.timeout_s, protect=self.protect, devices=("gpu",),
                         max_output_bytes=_MAX_RESULT)
        return timed_score(res, spec)


class TimedResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the timing harness (``_MAIN``) writes to ``result.json``, and nothing else."""

    status: Literal["ok", "import", "incorrect", "error"]
    reason: str = ""
    ref_us: float | None = None
    sub_us: float | None = None
    reps: int | None = None

    def timings_possible(self) -> bool:
        return (self.ref_us is not None and self.sub_us is not None and self.reps is not None and self.reps >= 1
                and all(math.isfinite(t) and t > 0 for t in (self.ref_us, self.sub_us)))


def timed_score(res: SandboxResult, spec: dict[str, Any]) -> Score:
    """The score of a timed run from what its sandbox returned. Whatever the submission did to the
    result channel is a typed failure with bounded text, never an exception: no ``result.json``
    is a ``content`` failure (it crashed, timed out, was refused); one the harness could not have
    written (not JSON, not its fields, impossible timings) is ``tampering``."""
    about = {"sandbox": res.status, "wall_s": res.wall_s, "isolation": list(res.isolation), "blocked": list(res.blocked[:20])}
    raw = res.outputs.get("result.json")
    if raw is None:
        why = (res.stderr.strip().splitlines() or ["no error text"])[-1][-_MAX_REASON:]
        swapped = any(b.startswith("output result.json: not") for b in res.blocked)  # a link or not a file where the harness writes
        return _failed(spec, "tampering" if swapped else "content", {"status": "tampering" if swapped else res.status, "reason": why, **about})
    if res.status != "ok":  # a run that timed out or was refused does not score, whatever it left
        return _failed(spec, "content", {"status": res.status, "reason": f"the run ended {res.status}", **about})
    try:
        got = msgspec.json.decode(raw, type=TimedResult)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        return _failed(spec, "tampering", {"status": "tampering", "reason": f"result.json is not what the harness writes: {str(e)[:200]}", **about})
    outputs = {**msgspec.to_builtins(msgspec.structs.replace(got, reason=got.reason[-_MAX_REASON:])), **about}
    if got.status != "ok":
        return _failed(spec, "content", outputs)
    if not got.timings_possible():
        return _failed(spec, "tampering", {**outputs, "status": "tampering", "reason": "timings no run can give (zero, negative or not finite)"})
    assert got.ref_us is not None and got.sub_us is not None
    speedup = got.ref_us / got.sub_us
    return Score(round(speedup, 6), "none", {"valid": 1.0, "correct": 1.0, "speedup": speedup, "sub_us": got.sub_us, "ref_us": got.ref_us},
                 (ToolCall(name="sandbox", inputs={"episode": spec}, outputs=outputs),))


def _failed(spec: dict[str, Any], failure: Failure, outputs: dict[str, Any]) -> Score:
    metrics = {"valid": 1.0, "correct": 0.0, **({"tampering": 1.0} if failure == "tampering" else {})}
    return Score(0.0, failure, metrics, (ToolCall(name="sandbox", inputs={"episode": spec}, outputs=outputs),))
