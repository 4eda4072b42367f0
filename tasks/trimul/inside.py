"""TriMul's harness inside the sandbox: it does what the judge outside (``judge.py``) asks, one
message at a time over the sandbox's channel, and answers with what happened; it decides nothing.

The judge asks, in order: the PyTorch reference timed on fresh inputs (before any of the
submission's code is in this process), the submission imported, a warm-up call whose whole
output is saved for the judge to check, then timed calls, each on fresh inputs drawn from a seed
the judge sends only then, after each of which the judge names the output elements it wants back.
Every tool this loop uses (the clock, the CUDA events, the channel, the input generator) is bound
before the submission is imported, so replacing a module's attribute changes nothing here. That
is a first wall only: code in this process can reach anything in it, so the judge trusts none of
it. It checks every answer against the reference it computes itself, and its own clock bounds
what a forged timing can hide (``judge.py``).

Copied into the sandbox beside ``reference.py``; imports only torch, safetensors and the standard
library. Messages are JSON lines: in ``{"op": ...}``, out ``{"t": ...}``.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch

if TYPE_CHECKING or __name__ != "inside":
    from tasks.trimul.reference import generate_input, reference
else:  # pragma: no cover - the sandbox's copy
    from reference import generate_input, reference

__all__ = ["main"]

_REASON = 800  # characters of an error's text sent


def _tools(cuda: bool) -> dict[str, Any]:
    """Everything the loop calls, bound now (before the submission is imported)."""
    t: dict[str, Any] = {
        "read": os.read, "write": os.write, "loads": json.loads, "dumps": json.dumps, "b64d": base64.b64decode,
        "b64e": base64.b64encode, "frombuffer": torch.frombuffer, "int64": torch.int64, "Tensor": torch.Tensor,
        "gen": generate_input, "reference": reference, "save": safetensors.torch.save_file, "perf": time.perf_counter_ns,
        "exit": os._exit, "repr": repr, "type": type, "list": list, "float": float, "int": int, "bytearray": bytearray,
        "unravel": torch.unravel_index, "Generator": torch.Generator, "randint": torch.randint, "where": torch.where,
        "isfinite": torch.isfinite, "int8": torch.int8, "float64": torch.float64,
    }
    if cuda:
        ev = torch.cuda.Event
        t.update(sync=torch.cuda.synchronize, record=ev.record, elapsed=ev.elapsed_time,
                 events=(ev(enable_timing=True), ev(enable_timing=True)))  # type: ignore[no-untyped-call]
    return t


def _timer(t: dict[str, Any], cuda: bool) -> Callable[[Callable[[Any], Any], Any], tuple[Any, float]]:
    """(output, microseconds) of one call: CUDA events around it on a GPU, ``perf_counter_ns`` (a monotonic wall clock) on a CPU."""
    if cuda:
        sync, record, elapsed, (start, end) = t["sync"], t["record"], t["elapsed"], t["events"]

        def timed(fn: Callable[[Any], Any], data: Any) -> tuple[Any, float]:
            sync()
            record(start)
            out = fn(data)
            record(end)
            sync()
            return out, elapsed(start, end) * 1e3

        return timed
    perf = t["perf"]

    def timed_cpu(fn: Callable[[Any], Any], data: Any) -> tuple[Any, float]:
        t0 = perf()
        out = fn(data)
        return out, (perf() - t0) / 1e3

    return timed_cpu


def main() -> None:
    with open("episode.json") as f:
        spec = json.load(f)
    cuda = spec["device"] == "cuda"
    t = _tools(cuda)
    timed = _timer(t, cuda)
    fd = int(os.environ["SIA_CHANNEL_FD"])
    shape = {k: spec[k] for k in ("n", "bs", "dim", "masked", "dist")}
    read, write, loads, dumps = t["read"], t["write"], t["loads"], t["dumps"]
    buf = b""

    def say(**message: Any) -> None:
        data = dumps(message).encode() + b"\n"
        while data:
            data = data[write(fd, data):]

    def ask() -> dict[str, Any] | None:
        nonlocal buf
        while b"\n" not in buf:
            chunk = read(fd, 1 << 16)
            if not chunk:
                return None
            buf += chunk
        line, _, buf = buf.partition(b"\n")
        m: dict[str, Any] = loads(line)
        return m

    state: dict[str, Any] = {"fn": lambda d: t["reference"](*d[:3]), "out": None}
    while (m := ask()) is not None:
        op = m["op"]
        try:
            if op == "bye":
                say(t="bye")
                t["exit"](0)  # nothing the submission left running gets another word in
            _serve(op, m, t, state, timed, shape, say)
        except BaseException as e:  # noqa: BLE001 - whatever the submission raised, said to the judge
            say(t="error", at=op, reason=t["repr"](e)[-_REASON:])


def _serve(op: str, m: dict[str, Any], t: dict[str, Any], state: dict[str, Any],
           timed: Callable[[Callable[[Any], Any], Any], tuple[Any, float]], shape: dict[str, Any], say: Callable[..., None]) -> None:
    """One request: ``go`` (a call on fresh inputs, timed), ``pick`` (elements of the last
    output, and signed sums of all of it), ``save`` (the last output whole, for the judge),
    ``import`` (the submission)."""
    if op == "import":
        sys.path.insert(0, os.getcwd())
        import submission  # noqa: PLC0415 - only now, when the judge asks

        state["fn"] = submission.custom_kernel
        say(t="imported")
    elif op == "go":
        state["out"] = None
        x, mask, w = t["gen"](shape["n"], shape["bs"], shape["dim"], masked=shape["masked"], dist=shape["dist"], seed=m["seed"],
                              device="cuda" if "sync" in t else "cpu")
        out, us = timed(state["fn"], (x, mask, w, dict(shape)))
        if t["type"](out) is not t["Tensor"]:  # a subclass could compute what is asked of it only when asked
            raise TypeError(f"custom_kernel returned {t['type'](out).__name__}, not a plain torch.Tensor")
        state["out"] = out
        say(t="done", us=t["float"](us), shape=t["list"](out.shape))
    elif op == "pick":
        out = state["out"].detach()
        idx = t["frombuffer"](t["bytearray"](t["b64d"](m["idx"])), dtype=t["int64"]).to(out.device)
        vals = out[t["unravel"](idx, out.shape)].float().cpu().contiguous()  # indexed in place: a view is never copied whole
        say(t="vals", b64=t["b64e"](vals.numpy().tobytes()).decode(), proj=[_projection(t, out, seed) for seed in m["proj"]],
            nonfinite=t["int"]((~t["isfinite"](out)).sum()))
    elif op == "save":
        t["save"]({"out": state["out"].detach().float().contiguous().cpu()}, "full.safetensors")
        say(t="saved")
    else:
        raise ValueError(f"unknown request {op!r}")


def _projection(t: dict[str, Any], out: Any, seed: int) -> float:
    """The sum of the output's finite elements, each times a sign drawn from ``seed`` (which the
    judge sends only after the call): no answer but the whole output gives it."""
    g = t["Generator"](device=out.device).manual_seed(seed)
    signs = t["randint"](0, 2, out.shape, generator=g, device=out.device, dtype=t["int8"]) * 2 - 1
    finite = t["where"](t["isfinite"](out), out.float(), 0.0)
    total: float = t["float"]((finite * signs).sum(dtype=t["float64"]))
    return total


if __name__ == "__main__":  # pragma: no cover
    main()
