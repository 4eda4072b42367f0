"""TriMul's judge: it runs outside the sandbox, drives the harness inside (``inside.py``) over the
sandbox's live channel, and decides the score from what it checked itself.

Why: a submission runs in the same process as the harness that calls it, so anything that
process says (a result file, a time, an "all correct") the submission could have written. So:

- **inputs from seeds it cannot read**: every call's inputs are drawn, inside, from a seed the
  judge derives from a key the sandbox never sees and sends only when the call is due; a
  submission cannot precompute, and no two calls share tensors (a cache keyed by the input's
  pointer returns the last call's output, which the checks catch);
- **correctness checked outside**: the warm-up call's whole output is saved and compared here,
  element by element, with the reference computed here on the same device from the same seed;
  after each timed call the judge names ``picks`` elements at random and asks for ``projections``
  sums of all the output's elements, each times a random sign; both drawn only then, so only the
  whole output answers them (computing just the picked elements fails the sums). Elements are
  held to the benchmark's rule (|out - ref| <= 2e-2 + 2e-2 |ref|, same NaN/inf positions), a sum
  to within 6 standard deviations of what in-tolerance errors can give. The output must be a
  plain ``torch.Tensor`` (a subclass could compute what is asked of it only when asked);
- **timings bounded by a clock outside**: the harness times each call with CUDA events (a
  monotonic clock in the interpreter) bound before the submission was imported, and the judge
  times, on its own clock, each request from before it leaves to its answer. The reference is
  timed first, before the submission is in the process, and is the calibration: the median call's
  unexplained time (the judge's window less the claimed time) and the median wait for the picks
  and sums may exceed the reference's by at most half again plus ``allowance_us``, or the run is
  ``tampering``. The score is the ratio of the medians, so a forged time on fewer than half the
  calls does not move it, and on more it moves the medians the judge bounds: a patched clock or
  work left on another stream can hide at most about the allowance per call, and output
  computed when the picks come must be computed whole within it. The figures are in the tool
  event;
- **a run that did not finish the conversation** (exited at import, ``os._exit``, a line the
  harness never sends, a flood) scores 0 as ``tampering``; one that crashed, ran out of time or
  memory, or was refused scores 0 as ``content``; every text kept is bounded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import statistics
from typing import Any

import msgspec
import safetensors.torch
import torch

from sia_engine.domain.payloads import ToolCall
from sia_engine.loop.task import Failure, Score
from sia_engine.sandbox.channel import Channel
from sia_engine.sandbox.jail import SandboxResult
from tasks.trimul.reference import check, generate_input, reference

__all__ = ["Plan", "Judge", "Rep", "Transcript"]

_REASON = 800  # characters of any text kept


class Plan(msgspec.Struct, frozen=True):
    """One judged run: the shape, where it runs, how many calls, the allowances, and the key
    (never sent into the sandbox) that the seeds and picks are derived from."""

    n: int
    bs: int
    dim: int
    masked: bool
    dist: str
    device: str  # "cuda", or "cpu" for Triton's interpreter
    key: bytes
    salt: str  # the episode and the submission's digest: another submission gets other inputs
    reps: int = 10  # timed calls of each of the reference and the submission (at least 3 unless the budget ends them)
    budget_s: float = 10.0  # seconds of timed calls per side, after the first 3
    picks: int = 4096  # output elements checked after each timed call
    projections: int = 2  # signed sums of the whole output checked after each timed call
    allowance_us: float = 200.0

    def numel(self) -> int:
        return self.bs * self.n * self.n * self.dim

    def _draw(self, what: str) -> int:
        mac = hmac.new(self.key, f"{self.salt}|{what}".encode(), hashlib.sha256).digest()
        return int.from_bytes(mac[:8], "little") >> 2  # fits torch's seed

    def seed(self, phase: str, i: int) -> int:
        return self._draw(f"inputs|{phase}|{i}")

    def pick(self, phase: str, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self._draw(f"picks|{phase}|{i}"))
        return torch.randint(0, self.numel(), (min(self.picks, self.numel()),), generator=g, dtype=torch.int64)

    def proj_seeds(self, phase: str, i: int) -> list[int]:
        return [self._draw(f"signs|{phase}|{i}|{k}") for k in range(self.projections)]

    def public(self) -> dict[str, Any]:
        return {"n": self.n, "bs": self.bs, "dim": self.dim, "masked": self.masked, "dist": self.dist, "device": self.device}


class Rep(msgspec.Struct):
    """One call as the judge saw it: the time the harness claims, the judge's window around it,
    the wait for the picked elements, and those elements."""

    phase: str
    i: int
    seed: int
    us: float
    window_us: float
    pick_us: float | None = None
    vals: bytes = b""
    proj: list[float] = []
    nonfinite: int = 0


class Transcript(msgspec.Struct):
    ref: list[Rep] = []
    sub: list[Rep] = []  # sub[0]: the warm-up, saved whole
    imported: bool = False
    bye: bool = False
    error: tuple[str, str] | None = None  # (request, what the harness said went wrong)
    protocol: str = ""  # what the channel carried that the harness never sends ("": nothing)
    judge_error: str = ""  # the judge's own failure, not the submission's
    wrong_shape: str = ""


class _Done(msgspec.Struct, tag_field="t", tag="done", forbid_unknown_fields=True):
    us: float
    shape: list[int]


class _Vals(msgspec.Struct, tag_field="t", tag="vals", forbid_unknown_fields=True):
    b64: str
    proj: list[float]
    nonfinite: int


class _Saved(msgspec.Struct, tag_field="t", tag="saved", forbid_unknown_fields=True):
    pass


class _Imported(msgspec.Struct, tag_field="t", tag="imported", forbid_unknown_fields=True):
    pass


class _Bye(msgspec.Struct, tag_field="t", tag="bye", forbid_unknown_fields=True):
    pass


class _Error(msgspec.Struct, tag_field="t", tag="error", forbid_unknown_fields=True):
    at: str
    reason: str


_Reply = _Done | _Vals | _Saved | _Imported | _Bye | _Error
_DECODE = msgspec.json.Decoder(_Reply)


class _Stop(Exception):
    """The conversation is over (said in the transcript)."""


class Judge:
    """``talk`` is ``run_python``'s channel part; ``verdict`` the score, once the run is over."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.tr = Transcript()

    def talk(self, ch: Channel) -> None:
        try:
            self._converse(ch)
        except _Stop:
            pass
        except Exception as e:  # noqa: BLE001 - the judge's own failure: said in the verdict, never a traceback through the loop
            self.tr.judge_error = repr(e)[-_REASON:]

    def _converse(self, ch: Channel) -> None:
        self._calls(ch, "ref")  # before the submission is in the process: the calibration
        self._ask(ch, {"op": "import"}, _Imported)
        self.tr.imported = True
        self._call(ch, "sub", 0, pick=False)  # the warm-up (compilation, autotuning), checked whole
        self._ask(ch, {"op": "save"}, _Saved)
        self._calls(ch, "sub")
        self._ask(ch, {"op": "bye"}, _Bye)
        self.tr.bye = True

    def _calls(self, ch: Channel, phase: str) -> None:
        if phase == "ref":
            self._call(ch, phase, 0, pick=False)  # its warm-up
        spent = 0.0
        for i in range(1, self.plan.reps + 1):
            spent += self._call(ch, phase, i, pick=True).window_us / 1e6
            if i >= 3 and spent > self.plan.budget_s:
                break

    def _call(self, ch: Channel, phase: str, i: int, *, pick: bool) -> Rep:
        seed = self.plan.seed(phase, i)
        done, window = self._ask(ch, {"op": "go", "seed": seed}, _Done)
        rep = Rep(phase, i, seed, done.us, window)
        getattr(self.tr, phase).append(rep)
        want = [self.plan.bs, self.plan.n, self.plan.n, self.plan.dim]
        if done.shape != want:
            self.tr.wrong_shape = f"the output's shape is {done.shape[:8]}, the reference's {want}"
            raise _Stop
        if pick:
            idx = self.plan.pick(phase, i)
            vals, rep.pick_us = self._ask(ch, {"op": "pick", "idx": base64.b64encode(idx.numpy().tobytes()).decode(),
                                               "proj": self.plan.proj_seeds(phase, i)}, _Vals)
            rep.proj, rep.nonfinite = vals.proj, vals.nonfinite
            if len(rep.proj) != self.plan.projections:
                self.tr.protocol = f"{len(rep.proj)} signed sums for call {phase} {i}, not {self.plan.projections}"
                raise _Stop
            try:
                rep.vals = base64.b64decode(vals.b64, validate=True)
            except ValueError:
                rep.vals = b""
            if len(rep.vals) != 4 * idx.numel():
                self.tr.protocol = f"the picked elements of call {phase} {i} are {len(rep.vals)} bytes, not {4 * idx.numel()}"
                raise _Stop
        return rep

    def _ask(self, ch: Channel, request: dict[str, Any], want: type[Any]) -> tuple[Any, float]:
        """Send ``request``; (its answer, microseconds from send to answer on the judge's clock)."""
        sent = ch.send(request)
        line, arrived = ch.recv() if sent is not None else (None, 0)
        if line is None:
            if ch.overflowed:
                self.tr.protocol = f"the channel was cut: {ch.overflowed}"
            raise _Stop
        try:
            reply = _DECODE.decode(line)
        except Exception as e:  # noqa: BLE001 - DecodeError, ValidationError, RecursionError of a 5,000-deep line: whatever it is
            self.tr.protocol = f"an answer to {request['op']!r} the harness never sends ({str(e)[:200]}): {line[:200]!r}"
            raise _Stop from None
        if isinstance(reply, _Error):
            self.tr.error = (reply.at[:40], reply.reason[-_REASON:])
            raise _Stop
        if not isinstance(reply, want):
            self.tr.protocol = f"{type(reply).__name__[1:].lower()} in answer to {request['op']!r}"
            raise _Stop
        assert sent is not None
        return reply, (arrived - sent) / 1e3

    def verdict(self, res: SandboxResult) -> Score:
        """The score, from the transcript and the sandbox's result; never raises on what the
        submission did. The score is the median call of each side: a forged time on fewer than half
        the calls does not move it, and on more it moves the medians the judge bounds."""
        about = {"sandbox": res.status, "wall_s": res.wall_s, "isolation": list(res.isolation), "blocked": list(res.blocked[:20]),
                 "calls": [len(self.tr.ref), len(self.tr.sub)]}
        failed = self._unfinished(res) or self._checked(res) or self._forged()
        if failed is not None:
            failure, reason = failed
            metrics = {"valid": 1.0, "correct": 0.0, **({"tampering": 1.0} if failure == "tampering" else {})}
            return self._score(0.0, failure, metrics, {"status": failure if failure == "tampering" else "failed",
                                                       "reason": reason[-_REASON:], **about})
        ref_us = statistics.median(r.us for r in self.tr.ref[1:])
        sub_us = statistics.median(r.us for r in self.tr.sub[1:])
        figures = {"status": "ok", "ref_us": ref_us, "sub_us": sub_us, "reps": len(self.tr.sub) - 1, **self.clock(), **about}
        if self.plan.device != "cuda":  # Triton's interpreter: correctness only, never a timing
            return self._score(1.0, "none", {"valid": 1.0, "correct": 1.0, "timed": 0.0}, figures)
        return self._score(round(ref_us / sub_us, 6), "none",
                           {"valid": 1.0, "correct": 1.0, "timed": 1.0, "speedup": ref_us / sub_us, "sub_us": sub_us, "ref_us": ref_us},
                           figures)

    def _score(self, score: float, failure: Failure, metrics: dict[str, float], outputs: dict[str, Any]) -> Score:
        return Score(score, failure, metrics, (ToolCall(name="sandbox", inputs={"episode": self.plan.public(), "reps": self.plan.reps},
                                                        outputs=outputs),))

    def _unfinished(self, res: SandboxResult) -> tuple[Failure, str] | None:
        """The conversation did not end as the harness ends it: why, and whose doing."""
        tr = self.tr
        if tr.judge_error:
            return "content", f"the judge failed (not the submission's doing; scored 0 unchecked): {tr.judge_error}"
        if tr.protocol:
            return "tampering", f"the channel carried what the harness never sends: {tr.protocol}"
        if tr.error is not None:
            at, why = tr.error
            return "content", f"{'importing the submission' if at == 'import' else 'a call'} failed ({at}): {why}"
        if tr.wrong_shape:
            return "content", tr.wrong_shape
        if not tr.bye:
            if res.status in ("timeout", "memory", "blocked") or (res.exit_code is not None and res.exit_code < 0):
                last = (res.stderr.strip().splitlines() or ["no error text"])[-1]
                return "content", f"the run ended {res.status} (exit {res.exit_code}) before the harness finished: {last}"
            return "tampering", (f"the process ended (exit {res.exit_code}) before the harness finished, without an error from it: "
                                 "the submission ended it")
        if res.status != "ok":  # finished, but refused something or ended oddly: a run not ok never scores
            return "content", f"the run ended {res.status}: {', '.join(res.blocked[:3]) or res.stderr[-200:]}"
        return None

    def _checked(self, res: SandboxResult) -> tuple[Failure, str] | None:
        try:
            return self._incorrect(res)
        except Exception as e:  # noqa: BLE001 - the judge's own failure (its device out of memory, ...): never a traceback
            return "content", f"the judge could not compute its reference (not the submission's doing; scored 0): {e!r}"[:_REASON]
        finally:
            if self.plan.device == "cuda":
                torch.cuda.empty_cache()

    def _incorrect(self, res: SandboxResult) -> tuple[Failure, str] | None:
        """The outputs against the reference computed here: the warm-up whole; of each timed call,
        the picked elements and the signed sums of all its elements."""
        try:
            out = safetensors.torch.load(res.outputs["full.safetensors"])["out"]
        except Exception as e:  # noqa: BLE001 - missing, not safetensors, no `out`: the harness writes none of those
            return "tampering", f"the warm-up's saved output is not what the harness writes ({type(e).__name__})"
        ok, why = check(out, self._reference(self.tr.sub[0].seed))
        if not ok:
            return "content", f"incorrect on the warm-up call: {why}"
        for rep in self.tr.sub[1:]:
            ref = self._reference(rep.seed)
            picked = ref[torch.unravel_index(self.plan.pick("sub", rep.i).to(ref.device), ref.shape)]
            ok, why = check(torch.frombuffer(bytearray(rep.vals), dtype=torch.float32), picked)
            if ok:
                ok, why = self._sums_agree(ref, rep)
            if not ok:
                return "content", f"incorrect on timed call {rep.i} (its picked elements and signed sums): {why}"
        return None

    def _sums_agree(self, ref: torch.Tensor, rep: Rep, *, rtol: float = 2e-2, atol: float = 2e-2) -> tuple[bool, str]:
        """Each signed sum within 6 standard deviations of what elements all within the tolerance
        could make it differ by (the signs are drawn after the call: independent of its errors)."""
        finite = torch.isfinite(ref)
        nonfinite = int((~finite).sum())
        if rep.nonfinite != nonfinite:
            return False, f"{rep.nonfinite} non-finite elements, the reference has {nonfinite}"
        delta = torch.where(finite, atol + rtol * ref.abs(), 0.0).double()
        bound = 6.0 * float(delta.square().sum().sqrt()) + 1e-6 * float(delta.sum())
        for k, seed in enumerate(self.plan.proj_seeds("sub", rep.i)):
            g = torch.Generator(device=ref.device).manual_seed(seed)
            signs = torch.randint(0, 2, ref.shape, generator=g, device=ref.device, dtype=torch.int8) * 2 - 1
            want = float((torch.where(finite, ref.float(), 0.0) * signs).sum(dtype=torch.float64))
            got = rep.proj[k]
            if not (math.isfinite(got) and abs(got - want) <= bound):
                return False, f"signed sum {k} is {got:.6g}, the reference's {want:.6g} (allowed difference {bound:.3g})"
        return True, ""

    def _reference(self, seed: int) -> torch.Tensor:
        p = self.plan
        x, mask, w = generate_input(p.n, p.bs, p.dim, masked=p.masked, dist=p.dist, seed=seed, device=p.device)  # type: ignore[arg-type]
        with torch.no_grad():
            return reference(x, mask, w)

    def clock(self) -> dict[str, float]:
        """Medians over the timed calls, in microseconds: the judge's window less the claimed time,
        and the wait for the picked elements and sums, for the reference and the submission."""
        def med(xs: list[float]) -> float:
            return statistics.median(xs) if xs else math.nan

        ref, sub = self.tr.ref[1:], self.tr.sub[1:]
        return {"ref_unexplained_us": med([r.window_us - r.us for r in ref]), "sub_unexplained_us": med([r.window_us - r.us for r in sub]),
                "ref_pick_us": med([r.pick_us or 0.0 for r in ref]), "sub_pick_us": med([r.pick_us or 0.0 for r in sub]),
                "allowance_us": self.plan.allowance_us}

    def _forged(self) -> tuple[Failure, str] | None:
        """Times no run can give, or more time than the claims explain, seen on the judge's clock.
        The window starts before the request leaves, so it holds all of the call; 1% and 2 us of
        slack for a GPU's clock against the host's."""
        for r in (*self.tr.ref[1:], *self.tr.sub[1:]):
            if not (math.isfinite(r.us) and 0 < r.us <= 1.01 * r.window_us + 2.0):
                who = "the reference's timing (before the submission was imported: not its doing)" if r.phase == "ref" else "submission"
                return ("content" if r.phase == "ref" else "tampering",
                        f"{r.phase} call {r.i} claims {r.us} us in a {r.window_us:.1f} us window on the judge's clock ({who})")
        c, a = self.clock(), self.plan.allowance_us
        if c["sub_unexplained_us"] > 1.5 * c["ref_unexplained_us"] + a:
            return "tampering", (f"the judge's clock saw {c['sub_unexplained_us']:.0f} us per call the claimed times do not explain, "
                                 f"against {c['ref_unexplained_us']:.0f} us for the reference (allowance {a:.0f} us)")
        if c["sub_pick_us"] > 1.5 * c["ref_pick_us"] + a:
            return "tampering", (f"the picked elements took {c['sub_pick_us']:.0f} us to come back after a timed call, against "
                                 f"{c['ref_pick_us']:.0f} us for the reference (allowance {a:.0f} us): computed after the timing")
        return None
