"""Throughput of the default model in the engine, every figure measured in the same run.

    python bench/bench_throughput.py [--device cpu|cuda] [--main-job] [--baseline-main-job] [--try-compile]

(a) The machine's limit: forward-pass tokens/s of the default model at batch 1, 8 and 32 with a
    preallocated (static) key/value cache, decoding one token per row per step after a prompt of
    the main job's length; no sampling, no Python per row.
(b) The engine's sampled generation at the main job's shapes (8 scrna-denoise training prompts x 4
    samples, temperature 0.7, at most 48 new tokens): before (``generate_serial``, one request at a
    time, as the loop generated before batching) and after (one batched call of 32 rows), tokens/s,
    the ratio, and the share of (a)'s limit at batch 32. ``--try-compile``: the forward pass of (a)
    at batch 32 again under ``torch.compile`` (compile time said apart).
(c) ``--main-job``: the README's main job (``sia run --task scrna-denoise --iterations 4``) on a fresh
    store, its wall time split from its log's timestamps into generation, scoring, training and
    the rest (feedback and the engine's own recording); ``--baseline-main-job`` runs it again with
    ``--batch-rows 0 --no-lora-packing`` (the engine before this change) for the ratio.
(d) LoRA training tokens/s (packed and padded, the main job's settings on its rft-shaped
    examples) against a bare forward + backward of the same batch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import torch

from sia_engine.models.decode import _Batch, Row
from sia_engine.models.hf import HFModel
from sia_engine.models.presets import load_model
from sia_engine.models.protocol import LoraSettings, Request, TrainExample
from tasks import get_task

ROOT = Path(__file__).resolve().parents[1]


def main_job_requests(task: Any) -> list[Request]:
    sc = task.scaffold()
    dec = msgspec.structs.replace(sc.decoding, temperature=0.7)
    return [Request(task.messages(sc, ep), dec, seed=100 + k, prefix=task.answer_prefix, n=4) for k, ep in enumerate(task.episodes("train")[:8])]


def forward_limit(m: HFModel, prompt: tuple[int, ...], batch: int, steps: int = 48, net: Any = None) -> float:
    """Decode-step tokens/s at ``batch`` rows over the engine's cache (prefill not timed), the
    best of two runs."""
    return max(_forward_once(m, prompt, batch, steps, net) for _ in range(2))


def _forward_once(m: HFModel, prompt: tuple[int, ...], batch: int, steps: int, net: Any) -> float:
    rows = [Row(prompt, seed=i, temperature=0.0, max_new_tokens=steps + 1) for i in range(batch)]
    with torch.no_grad():
        b = _Batch(m.base if net is None else net, rows, m.tok.pad_token_id, m.device)
        tok = torch.full((batch,), 28, device=m.device)
        b.step(tok)  # warm
        _sync(m)
        t0 = time.perf_counter()
        for _ in range(steps):
            b.step(tok)
        _sync(m)
        return batch * steps / (time.perf_counter() - t0)


def _sync(m: HFModel) -> None:
    if m.device == "cuda":
        torch.cuda.synchronize()


def sampled(m: HFModel, reqs: list[Request], serial: bool) -> tuple[float, int, float]:
    t0 = time.perf_counter()
    gens = [g for r in reqs for g in m.generate_serial([r])] if serial else m.generate(reqs)
    _sync(m)
    dt = time.perf_counter() - t0
    n = sum(g.n_tokens for g in gens)
    return n / dt, n, dt


def lora(m: HFModel, task: Any, packing: bool, steps: int = 4) -> tuple[float, float]:
    """(training tokens/s, bare forward+backward tokens/s) at the main job's batch of 4."""
    sc = task.scaffold()
    exs = [TrainExample(task.messages(sc, ep), f'{8 + k}, "k": {5 + k}, "t": 3, "transform": "sqrt", "clip": 2.5}}', prefix=task.answer_prefix)
           for k, ep in enumerate(task.episodes("train")[:8])]
    settings = LoraSettings(steps=steps, packing=packing)
    tokens = sum(len(m.encode_example(e, settings.max_length)[0]) for e in exs[:4]) * steps  # batches of 4 of similar length
    t0 = time.perf_counter()
    m.train_adapter(exs, settings, seed=1, recipe="rft")
    train = tokens / (time.perf_counter() - t0)
    batch = [m.encode_example(e, settings.max_length) for e in exs[:4]]
    m._training_adapter(settings, 2, None)
    m.peft.train()  # type: ignore[union-attr]
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = m._ce_loss(batch, packing)
        loss.backward()
    _sync(m)
    bare = sum(len(i) for i, _ in batch) * steps / (time.perf_counter() - t0)
    m.peft.eval()  # type: ignore[union-attr]
    return train, bare


def main_job(store: Path, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "sia_engine.cli.main", "run", "--task", "scrna-denoise", "--iterations", "4", "--store", str(store), "--json", *extra]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"main job failed: {out.stderr[-2000:]}")
    summary = json.loads(out.stdout)
    return {"wall_s": wall, **split_from_log(store), "head_val": summary.get("head_val_score"), "summary": summary}


def split_from_log(store: Path) -> dict[str, float]:
    """Generation, scoring, training, the rest: from the log's timestamps. A run of recorded
    outputs after a boundary event: generation is the time to its first output less that output's
    own scoring (a sandbox run's wall_s), scoring the rest; training runs from a verdict to its
    adapter."""
    from sia_engine.domain.events import ActionTaken, AdapterCheckpointed, TrajectoryRecorded, decode_envelope
    from store import Store

    with Store.open(store, read_only=True) as s:
        envs = s.log.read("main")
    t = [e.recorded_at.timestamp() for e in envs]
    evs = [decode_envelope(e) for e in envs]
    gen = score = train = 0.0
    i = 1
    while i < len(evs):
        if isinstance(evs[i], ActionTaken | TrajectoryRecorded):
            j = i
            while j + 1 < len(evs) and isinstance(evs[j + 1], ActionTaken | TrajectoryRecorded):
                j += 1
            first_tool = next((e for e in evs[i:j + 1] if isinstance(e, ActionTaken) and e.actor == "tool"), None)
            own = float(first_tool.outputs.get("wall_s", 0.0)) if first_tool and not first_tool.outputs.get("cached") else 0.0
            g = max(0.0, t[i] - t[i - 1] - own)
            gen += g
            score += t[j] - t[i - 1] - g
            i = j + 1
            continue
        if isinstance(evs[i], AdapterCheckpointed):
            train += t[i] - t[i - 1]
        i += 1
    total = t[-1] - t[0]
    return {"log_s": total, "generation_s": gen, "scoring_s": score, "training_s": train, "rest_s": total - gen - score - train}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--main-job", action="store_true")
    ap.add_argument("--baseline-main-job", action="store_true")
    ap.add_argument("--try-compile", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    m = load_model("smollm2", device=args.device)
    assert isinstance(m, HFModel)
    task = get_task("scrna-denoise")
    reqs = main_job_requests(task)
    prompt = tuple(m.prompt_ids(reqs[0].messages, reqs[0].prefix))
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, prompt {len(prompt)} tokens")
    limit = {b: forward_limit(m, prompt, b) for b in (1, 8, 32)}
    print("(a) forward pass, preallocated cache: " + ", ".join(f"batch {b}: {v:.0f} tok/s" for b, v in limit.items()))
    m.base.set_attn_implementation("eager")
    eager = forward_limit(m, prompt, 32)
    m.base.set_attn_implementation("sdpa")
    print(f"    attention at batch 32: sdpa {limit[32]:.0f} tok/s, eager {eager:.0f} tok/s (the engine serves with sdpa)")
    if args.try_compile:
        t0 = time.perf_counter()
        compiled = torch.compile(m.base)
        first = _forward_once(m, prompt, 32, 2, compiled)
        warm = time.perf_counter() - t0
        print(f"    torch.compile, batch 32: {forward_limit(m, prompt, 32, net=compiled):.0f} tok/s after {warm:.0f} s of compiling ({first:.1f} tok/s while it did)")
    sampled(m, reqs[:1], serial=False)  # warm
    before = sampled(m, reqs, serial=True)
    after = sampled(m, reqs, serial=False)
    print(f"(b) sampled generation, 8 prompts x 4 samples, <= 48 tokens: before {before[0]:.1f} tok/s ({before[1]} tokens, {before[2]:.1f} s), "
          f"after {after[0]:.1f} tok/s ({after[1]} tokens, {after[2]:.1f} s): {after[0] / before[0]:.2f}x; "
          f"{100 * after[0] / limit[32]:.0f}% of the batch-32 forward limit")
    for packing in (True, False):
        train, bare = lora(m, task, packing)
        print(f"(d) LoRA ({'packed' if packing else 'padded'}), batch 4: {train:.0f} training tok/s vs {bare:.0f} bare forward+backward tok/s ({100 * train / bare:.0f}%)")
    for flag, extra in (("main_job", []), ("baseline_main_job", ["--batch-rows", "0", "--no-lora-packing"])):
        if getattr(args, flag):
            with tempfile.TemporaryDirectory() as d:
                r = main_job(Path(d) / "s", extra + (["--device", args.device]))
            if extra:  # one request per batch: scoring overlaps generation all along, the split from timestamps would not hold
                print(f"(c) main job before (--batch-rows 0 --no-lora-packing): {r['wall_s']:.0f} s wall; head val {r['head_val']}")
                continue
            print(f"(c) main job: {r['wall_s']:.0f} s wall; from the log ({r['log_s']:.0f} s): generation {r['generation_s']:.0f} s, "
                  f"scoring {r['scoring_s']:.0f} s, training {r['training_s']:.0f} s, the rest (feedback, recording between steps) "
                  f"{r['rest_s']:.1f} s; head val {r['head_val']}")


if __name__ == "__main__":
    main()
