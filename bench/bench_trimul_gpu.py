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
import time

import torch

from tasks.trimul.reference import RANKED, reference
from tasks.trimul.timing import Incorrect, geometric_mean, time_shape


def load_submission(path: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("submission", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.custom_kernel


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
        try:
            s, reps = time_shape(kernel, n, bs, dim, masked, dist, max_reps=args.max_reps, verify=True)
        except Incorrect as e:
            raise SystemExit(str(e)) from None
        ref_means.append(r)
        sub_means.append(s)
        print(f"{n:>5} {bs:>3} {dim:>4} {str(masked):>6} {dist:>6} {r:>13.1f} {s:>14.1f} {r / s:>7.2f}x  ({reps} reps)")
    ref, sub = geometric_mean(ref_means), geometric_mean(sub_means)
    print(f"geometric mean: reference {ref:.1f} us, submission {sub:.1f} us ({ref / sub:.2f}x), {time.time() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
