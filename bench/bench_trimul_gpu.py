"""TriMul on a GPU: time the reference and a submitted kernel in one call, by the benchmark's rules.

    python bench/bench_trimul_gpu.py tests/fixtures/trimul/correct.py [--max-reps 100]

For each of the 7 ranked shapes: inputs regenerated (new seed) and the output rechecked against the
reference before every timed repetition; CUDA events around each call; at least 3 and at most
``--max-reps`` repetitions, stopping early once the standard error of the mean is under 0.1% of
it (or after 10 s of timing). The score is the geometric mean of the 7 mean times. The reference is
timed the same way in the same process. Needs CUDA: CPU timings of Triton's interpreter are never
kernel performance.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from tasks.trimul.reference import RANKED, check, generate_input, reference  # noqa: E402


def load_submission(path: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("submission", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.custom_kernel


def time_shape(fn, n: int, bs: int, dim: int, masked: bool, dist: str, *, max_reps: int, verify: bool) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    times: list[float] = []
    spent = 0.0
    for rep in range(max_reps + 1):
        x, mask, w = generate_input(n, bs, dim, masked=masked, dist=dist, seed=1000 + rep, device="cuda")  # type: ignore[arg-type]
        data = (x, mask, w, {"n": n, "bs": bs, "dim": dim, "masked": masked, "dist": dist})
        if verify:  # recheck before every timing (the output of this very input)
            ok, why = check(fn(data), reference(x, mask, w))
            if not ok:
                raise SystemExit(f"incorrect on N={n} bs={bs} dim={dim} masked={masked} {dist} (rep {rep}): {why}")
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(data)
        end.record()
        torch.cuda.synchronize()
        if rep == 0:
            continue  # warm-up (compilation, autotuning)
        times.append(start.elapsed_time(end) * 1e3)  # microseconds
        spent += times[-1] / 1e6
        if len(times) >= 3:
            mean = statistics.fmean(times)
            sem = statistics.stdev(times) / math.sqrt(len(times))
            if sem / mean < 1e-3 or spent > 10:
                break
    return statistics.fmean(times), len(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("submission")
    ap.add_argument("--max-reps", type=int, default=100)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark times GPU kernels only (CPU runs check correctness, see tests)")
    kernel = load_submission(args.submission)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'N':>5} {'bs':>3} {'dim':>4} {'masked':>6} {'dist':>6} {'reference us':>13} {'submission us':>14} {'speed-up':>8}")
    ref_means, sub_means = [], []
    t0 = time.time()
    for n, bs, dim, masked, dist in RANKED:
        r, _ = time_shape(lambda d: reference(*d[:3]), n, bs, dim, masked, dist, max_reps=args.max_reps, verify=False)
        s, reps = time_shape(kernel, n, bs, dim, masked, dist, max_reps=args.max_reps, verify=True)
        ref_means.append(r)
        sub_means.append(s)
        print(f"{n:>5} {bs:>3} {dim:>4} {str(masked):>6} {dist:>6} {r:>13.1f} {s:>14.1f} {r / s:>7.2f}x  ({reps} reps)")
    geo = lambda xs: math.exp(sum(map(math.log, xs)) / len(xs))  # noqa: E731
    print(f"geometric mean: reference {geo(ref_means):.1f} us, submission {geo(sub_means):.1f} us "
          f"({geo(ref_means) / geo(sub_means):.2f}x), {time.time() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
