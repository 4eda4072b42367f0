"""Issue 19, finding 6 and Deliver 2: TriMul scores a submission cannot forge. The judge drives the
harness from outside the sandbox, checks outputs against its own reference on inputs from seeds it
keeps, and bounds the harness's clock with its own. Each attack below scored before (a forged
result file scored 1,000,000); here each is a failure on the trajectory, typed, with bounded text.

Submissions are plain torch (no Triton: seconds each), run on CPU in the judge's interpreter mode;
the judge's logic is the same on a GPU, where the clock is CUDA events (``bench/gpu_trimul_editable.sh``)."""

from __future__ import annotations

import inspect
import math

import pytest
import safetensors.torch
import torch

from sia_engine.sandbox.jail import SandboxResult
from tasks.trimul.judge import Judge, Plan, Rep, Transcript
from tasks.trimul.reference import HIDDEN, generate_input, reference
from tasks.trimul.task import TriMul

# the reference's own source as a submission (it runs in the sandbox, where `tasks` cannot be imported)
HONEST = (f"import torch\nHIDDEN = {HIDDEN}\n{inspect.getsource(reference)}_ref = reference\n"
          "def custom_kernel(data):\n    x, mask, w, cfg = data\n    return _ref(x, mask, w)\n")


def judged(src: str, **kw: object) -> tuple[float, str, dict[str, object]]:
    task = TriMul(interpret=True, secret=b"test key", **kw)  # type: ignore[arg-type]
    s = task.score(task.episodes("train")[1], f"```python\n{src}\n```")
    out = s.tools[0].outputs
    assert len(str(out.get("reason", ""))) <= 800
    return s.score, s.failure, out


def test_an_honest_submission_scores_and_the_judge_says_what_it_measured() -> None:
    score, failure, out = judged(HONEST)
    assert (score, failure, out["status"], out["sandbox"], out["blocked"]) == (1.0, "none", "ok", "ok", []), out
    assert out["calls"] == [3, 3] and out["reps"] == 2  # a warm-up and two timed calls, each side
    assert math.isfinite(float(out["sub_unexplained_us"])) and float(out["allowance_us"]) == 100_000.0  # type: ignore[arg-type]


def test_a_forged_result_file_and_an_exit_at_import_is_tampering() -> None:
    forged = ("import json, os\njson.dump({'status': 'ok', 'ref_us': 1e6, 'sub_us': 1.0, 'reps': 3}, open('result.json', 'w'))\n"
              "os._exit(0)\n\ndef custom_kernel(data):\n    return data[0]\n")
    score, failure, out = judged(forged)
    assert (score, failure) == (0.0, "tampering") and "before the harness finished" in str(out["reason"])


def test_a_cached_output_is_caught_on_fresh_inputs() -> None:
    """Every call gets inputs no earlier call saw, so an output kept from an earlier call (keyed
    here by shape; by the input's pointer it is caught whenever the allocator reuses one) is wrong."""
    cached = HONEST.replace("def custom_kernel(data):\n    x, mask, w, cfg = data\n    return _ref(x, mask, w)",
                            "_C = {}\ndef custom_kernel(data):\n    p = tuple(data[0].shape)\n"
                            "    if p not in _C:\n        _C[p] = _ref(*data[:3])\n    return _C[p]")
    assert cached != HONEST
    score, failure, out = judged(cached)
    assert (score, failure) == (0.0, "content") and "incorrect on timed call" in str(out["reason"])


def test_writing_the_channel_itself_is_tampering() -> None:
    forger = HONEST + ('import os\nos.write(int(os.environ["SIA_CHANNEL_FD"]), '
                       'b\'{"t":"imported"}\\n{"t":"done","us":1.0,"shape":[1,32,32,128]}\\n\')\n')
    score, failure, out = judged(forger)
    assert (score, failure) == (0.0, "tampering") and "never sends" in str(out["reason"])


def test_a_flood_down_the_channel_is_cut_and_is_tampering() -> None:
    flood = HONEST + 'import os\nfd = int(os.environ["SIA_CHANNEL_FD"])\nfor _ in range(40):\n    os.write(fd, b"x" * (1 << 20))\n'
    score, failure, out = judged(flood)
    assert (score, failure) == (0.0, "tampering") and "cut" in str(out["reason"])


def test_a_patched_clock_is_caught_by_the_judges_clock() -> None:
    """The harness's timer reads a clock bound before the import; code in the process can still
    reach the closure and swap it: the claimed times shrink, the judge's window does not."""
    patched = HONEST.replace("    return _ref(x, mask, w)", "    import time\n    time.sleep(0.4)\n    return _ref(x, mask, w)") + '''
import gc, itertools
_tick = itertools.count(step=1000)
for f in gc.get_objects():
    if callable(f) and getattr(f, "__name__", "") == "timed_cpu" and f.__closure__:
        for cell in f.__closure__:
            if getattr(cell.cell_contents, "__name__", "") == "perf_counter_ns":
                cell.cell_contents = lambda: next(_tick)
'''
    score, failure, out = judged(patched)
    assert (score, failure) == (0.0, "tampering") and "the claimed times do not explain" in str(out["reason"]), out


def test_a_patched_harness_that_computes_the_checked_elements_late_is_caught() -> None:
    """The harness answering fast with a wrong output and computing the right one only when the
    judge names the elements it checks: the wait for those elements gives it away."""
    lazy = HONEST.replace("    return _ref(x, mask, w)", "    _last[:] = [data]\n    return torch.zeros(1, 32, 32, 128)") + '''
import inside, time
_last = []
_serve = inside._serve
def _late(op, m, t, state, timed, shape, say):
    if op in ("pick", "save"):
        time.sleep(1.5 if op == "pick" else 0)  # the real kernel, run only now (well past an honest wait)
        state["out"] = _ref(*_last[0][:3])
    return _serve(op, m, t, state, timed, shape, say)
inside._serve = _late
'''
    score, failure, out = judged(lazy)
    assert (score, failure) == (0.0, "tampering") and "computed after the timing" in str(out["reason"]), out


@pytest.mark.parametrize(("body", "failure", "says"), [
    ("    raise RuntimeError('no kernel')", "content", "a call failed (go): RuntimeError('no kernel')"),
    ("    import ctypes\n    ctypes.string_at(0)", "content", "before the harness finished"),  # a real segfault
    ("    return data[0][..., :4]", "content", "the output's shape is"),
    ("    return [1, 2]", "content", "not a plain torch.Tensor"),
    ("    import os\n    os._exit(3)", "tampering", "the submission ended it"),
])
def test_crashes_are_content_and_exits_are_tampering(body: str, failure: str, says: str) -> None:
    score, got, out = judged("def custom_kernel(data):\n" + body + "\n")
    assert (score, got) == (0.0, failure) and says in str(out["reason"]), out


# the verdict from transcripts the submission could make the judge see, without a sandbox

PLAN = Plan(n=8, bs=1, dim=16, masked=False, dist="normal", device="cpu", key=b"k", salt="s", reps=3, picks=64)


def signed_sum(out: torch.Tensor, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, out.shape, generator=g, dtype=torch.int8) * 2 - 1
    return float((out * signs).sum(dtype=torch.float64))


def honest_transcript() -> tuple[Transcript, SandboxResult]:
    tr = Transcript(imported=True, bye=True)
    for phase in ("ref", "sub"):
        for i in range(4):
            rep = Rep(phase, i, PLAN.seed(phase, i), 100.0, 300.0, 50.0)
            out = reference(*generate_input(8, 1, 16, masked=False, dist="normal", seed=rep.seed))
            rep.vals = out.reshape(-1)[PLAN.pick(phase, i)].numpy().tobytes()
            rep.proj = [signed_sum(out, seed) for seed in PLAN.proj_seeds(phase, i)]
            getattr(tr, phase).append(rep)
            if phase == "sub" and i == 0:
                full = safetensors.torch.save({"out": out})
    return tr, SandboxResult("ok", 0, "", "", 1.0, outputs={"full.safetensors": full})


def test_an_honest_transcript_scores_and_a_reference_timing_fault_is_not_the_submissions() -> None:
    tr, res = honest_transcript()
    j = Judge(PLAN)
    j.tr = tr
    s = j.verdict(res)
    assert (s.score, s.failure) == (1.0, "none")
    tr.ref[1].us = 1e6  # the reference ran before the submission was imported
    s = j.verdict(res)
    assert (s.score, s.failure) == (0.0, "content") and "not its doing" in s.tools[0].outputs["reason"]


@pytest.mark.parametrize("us", [0.0, -1.0, float("nan"), float("inf"), 306.0])
def test_times_no_run_can_give_are_tampering(us: float) -> None:
    tr, res = honest_transcript()
    tr.sub[2].us = us
    j = Judge(PLAN)
    j.tr = tr
    s = j.verdict(res)
    assert (s.score, s.failure) == (0.0, "tampering") and "window on the judge's clock" in s.tools[0].outputs["reason"]


@pytest.mark.parametrize("full", [None, b"garbage", safetensors.torch.save({"x": torch.zeros(1)})])
def test_a_missing_or_foreign_saved_output_is_tampering(full: bytes | None) -> None:
    tr, res = honest_transcript()
    res = SandboxResult("ok", 0, "", "", 1.0, outputs={} if full is None else {"full.safetensors": full})
    j = Judge(PLAN)
    j.tr = tr
    assert j.verdict(res).failure == "tampering"


def test_a_wrong_picked_element_is_incorrect_and_runs_not_ok_never_score() -> None:
    tr, res = honest_transcript()
    vals = bytearray(tr.sub[3].vals)
    vals[0:4] = torch.tensor([1e6]).numpy().tobytes()
    tr.sub[3].vals = bytes(vals)
    j = Judge(PLAN)
    j.tr = tr
    s = j.verdict(res)
    assert (s.score, s.failure) == (0.0, "content") and "timed call 3" in s.tools[0].outputs["reason"]
    tr, _ = honest_transcript()
    for status, code in (("timeout", None), ("blocked", 87), ("memory", 86), ("error", -9)):
        j = Judge(PLAN)
        j.tr = tr
        s = j.verdict(SandboxResult(status, code, "", "y" * 50_000, 1.0, outputs=res.outputs))  # type: ignore[arg-type]
        assert (s.score, s.failure) == (0.0, "content") and len(s.tools[0].outputs["reason"]) <= 800, status


def test_signed_sums_catch_an_output_right_only_where_picked_and_allow_in_tolerance_errors() -> None:
    tr, res = honest_transcript()
    ref = reference(*generate_input(8, 1, 16, masked=False, dist="normal", seed=tr.sub[2].seed))
    noisy = ref + (0.02 + 0.02 * ref.abs()) * (torch.rand(ref.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    tr.sub[2].proj = [signed_sum(noisy, seed) for seed in PLAN.proj_seeds("sub", 2)]  # every element within the tolerance
    j = Judge(PLAN)
    j.tr = tr
    assert j.verdict(res).failure == "none"
    lazy = torch.zeros_like(ref).reshape(-1)
    idx = PLAN.pick("sub", 2)
    lazy[idx] = ref.reshape(-1)[idx]  # only the elements the judge named are right
    tr.sub[2].proj = [signed_sum(lazy.reshape(ref.shape), seed) for seed in PLAN.proj_seeds("sub", 2)]
    s = j.verdict(res)
    assert (s.score, s.failure) == (0.0, "content") and "signed sum" in s.tools[0].outputs["reason"]


def test_the_judge_itself_failing_is_said_and_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    tr, res = honest_transcript()
    j = Judge(PLAN)
    j.tr = tr
    monkeypatch.setattr(j, "_reference", lambda seed: (_ for _ in ()).throw(RuntimeError("CUDA out of memory")))
    s = j.verdict(res)
    assert (s.score, s.failure) == (0.0, "content") and "not the submission's doing" in s.tools[0].outputs["reason"]


def test_a_line_nested_thousands_deep_is_tampering_not_a_traceback() -> None:
    deep = HONEST + ('import os\nos.write(int(os.environ["SIA_CHANNEL_FD"]), '
                     "b'{\"x\":' + b'[' * 5000 + b']' * 5000 + b',\"t\":\"imported\"}\\n')\n")
    score, failure, out = judged(deep)
    assert (score, failure) == (0.0, "tampering") and "never sends" in str(out["reason"]), out


def test_a_tensor_subclass_is_refused_and_a_view_is_fine() -> None:
    lazy = HONEST.replace("    return _ref(x, mask, w)", "    return _Lazy(_ref(x, mask, w))") + "class _Lazy(torch.Tensor):\n    pass\n"
    score, failure, out = judged(lazy)
    assert (score, failure) == (0.0, "content") and "not a plain torch.Tensor" in str(out["reason"]), out
    view = HONEST.replace("    return _ref(x, mask, w)", "    return _ref(x, mask, w).permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)")
    score, failure, out = judged(view)
    assert (score, failure) == (1.0, "none"), out


def test_a_patched_harness_that_answers_only_the_picked_elements_is_caught() -> None:
    """It returns zeros, and when the picks come puts the right values at just those places."""
    picky = HONEST.replace("    return _ref(x, mask, w)", "    _last[:] = [data]\n    return torch.zeros(1, 32, 32, 128)") + '''
import inside
_last = []
_serve = inside._serve
def _picky(op, m, t, state, timed, shape, say):
    if op == "save":
        state["out"] = _ref(*_last[0][:3])
    if op == "pick":
        idx = torch.frombuffer(bytearray(__import__("base64").b64decode(m["idx"])), dtype=torch.int64)
        full = _ref(*_last[0][:3]).reshape(-1)
        out = torch.zeros_like(full)
        out[idx] = full[idx]
        state["out"] = out.reshape(1, 32, 32, 128)
    return _serve(op, m, t, state, timed, shape, say)
inside._serve = _picky
'''
    score, failure, out = judged(picky)
    assert (score, failure) == (0.0, "content") and "signed sum" in str(out["reason"]), out
