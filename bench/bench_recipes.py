"""Training recipes: speed of each (sft, rft, grpo), and evidence that the weights lever learns.

    python bench/bench_recipes.py                       # speed: tiny and default model, CPU
    python bench/bench_recipes.py --models tiny         # speed, tiny model only
    python bench/bench_recipes.py --device cuda         # speed on a GPU (bf16), for a lent device
    python bench/bench_recipes.py --evidence            # does one update raise the mean sampled score?

Speed: for each model and recipe, one LoRA update of ``--steps`` steps on the same scrna-denoise
prompts (4 samples per episode, the scores the sandbox gave them), timed after a warm-up update:
seconds per update, seconds per step, and training tokens per second (prompt + completion tokens
of every sequence in every step). Sampled generation is timed beside it (new tokens per second,
4 samples per request at temperature 0.7), the cost that every rollout pays.

Evidence (``--evidence``): with the default model on scrna-denoise, for each seed and each of rft
and grpo, the engine's own loop runs one iteration with only the weights lever and that recipe
forced (``--samples 4`` at temperature 0.7 on 8 training episodes), and the gate scores the parent
(the base version) and the child (the adapter) the same way: the mean score of 8 sampled
proposals on each of the 4 validation episodes (32 proposals, temperature 0.7, the same seeds
for both). The table prints both, the difference, the share of valid proposals and the distinct
configurations; whatever it shows is the result.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from sia_engine.models.protocol import LoraSettings, Request, TrainExample


def _scrna_examples(model, n_eps: int = 4, k: int = 4) -> tuple[list[TrainExample], int, float]:  # type: ignore[no-untyped-def]
    """k sampled proposals for each of n_eps scrna-denoise prompts (pbmc68k_reduced's 700 x 765),
    the new tokens drawn and the seconds it took. For timing only: the rewards are a stand-in
    (the sample's index), since scoring is not what is timed and the data need not travel."""
    from sia_engine.loop.task import chat_messages
    from tasks.scrna.task import ScrnaDenoise, episode_input, initial_scaffold

    sc = initial_scaffold()
    prefix = ScrnaDenoise.answer_prefix
    out, tokens, t0 = [], 0, time.perf_counter()
    for i in range(n_eps):
        msgs = chat_messages(sc, episode_input(700, 765, i, n_eps))
        gens = model.generate([Request(msgs, sc.decoding, seed=10 + i, prefix=prefix, n=k)])
        tokens += sum(g.n_tokens for g in gens)
        out += [TrainExample(msgs, g.text, source=f"e{i}.{j}", reward=float(j), group=f"e{i}", prefix=prefix) for j, g in enumerate(gens)]
    return out, tokens, time.perf_counter() - t0


def _load(spec: str, device: str):  # type: ignore[no-untyped-def]
    """A preset, or ``arch:FOLDER``: a model built from FOLDER's config and tokenizer with random
    weights (the same shapes and so the same speed, where the weights cannot travel)."""
    from sia_engine.models.presets import load_model

    if not spec.startswith("arch:"):
        return load_model(spec, device=device)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from sia_engine.domain.events import ModelRef
    from sia_engine.models.hf import HFModel

    folder = spec.removeprefix("arch:")
    torch.manual_seed(0)
    net = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    return HFModel(net, AutoTokenizer.from_pretrained(folder), ModelRef(id=f"random-weights:{Path(folder).name}"), device=device)


def _tokens(model, examples: list[TrainExample], settings: LoraSettings) -> float:  # type: ignore[no-untyped-def]
    return sum(len(model.encode_example(e, settings.max_length)[0]) for e in examples) / len(examples)


def speed(models: list[str], device: str, steps: int) -> None:
    print(f"device {device}; {steps} steps per update, batch 4 (grpo: one group of 4 samples a step); a 1-step warm-up update per trainer first")
    print(f"{'model':12} {'recipe':6} {'s/update':>9} {'s/step':>8} {'train tok/s':>12} {'gen tok/s':>10}")
    for spec in models:
        model = _load(spec, device)
        _scrna_examples(model, n_eps=1)  # warm-up
        examples, gen_tokens, gen_s = _scrna_examples(model)
        settings = LoraSettings(steps=steps, batch_size=4)
        per_seq = _tokens(model, examples, settings)
        for recipe in ("sft", "grpo"):  # warm-up: kernels, and TRL's first import and trainer set-up
            model.train_adapter(examples, LoraSettings(steps=1, batch_size=4), seed=0, recipe=recipe)  # type: ignore[arg-type]
        for recipe in ("sft", "rft", "grpo"):
            data = examples if recipe != "rft" else [e for e in examples if (e.reward or 0) >= 2]
            t0 = time.perf_counter()
            try:
                model.train_adapter(data, settings, seed=1, recipe=recipe)  # type: ignore[arg-type]
            except Exception as e:  # noqa: BLE001 - a bench reports what failed and goes on
                print(f"{spec:12} {recipe:6} failed: {type(e).__name__}: {e}")
                continue
            s = time.perf_counter() - t0
            seqs = steps * 4
            name = spec if not spec.startswith("arch:") else "arch:" + Path(spec[5:]).name[:7]
            print(f"{name:12} {recipe:6} {s:9.2f} {s / steps:8.3f} {seqs * per_seq / s:12.0f} {gen_tokens / gen_s:10.1f}")
        del model


def evidence(seeds: list[int], recipes: list[str], device: str, steps: int) -> None:
    from sia_engine.loop.feedback.rule import RulePolicy
    from sia_engine.loop.loop import EvalProtocol, Loop, LoopConfig
    from sia_engine.models.presets import load_model
    from store import Store
    from tasks import get_task

    model = load_model("smollm2", device=device)
    rows = []
    print("seed recipe  parent  child   diff   valid p/c   distinct p/c  examples  train s")
    for seed in seeds:
        for recipe in recipes:
            task = get_task("scrna-denoise")
            with tempfile.TemporaryDirectory() as d, Store.create(d) as store:
                cfg = LoopConfig(task="scrna-denoise", levers=("weights",), seed=seed, iterations=1, recipe=recipe,  # type: ignore[arg-type]
                                 samples=4, temperature=0.7, train_episodes=8, val_episodes=4,
                                 eval=EvalProtocol(mode="mean", samples=8, temperature=0.7), lora=LoraSettings(steps=steps))
                t0 = time.perf_counter()
                state = Loop(store, task=task, model=model, feedback=RulePolicy(), config=cfg).run()
                wall = time.perf_counter() - t0
                from sia_engine.domain.events import (
                    AdapterCheckpointed,
                    VersionEvaluated,
                    decode_envelope,
                )

                events = [decode_envelope(e) for e in store.log.read("main")]
                evals = {e.version_id: e for e in events if isinstance(e, VersionEvaluated)}
                adapters = [e for e in events if isinstance(e, AdapterCheckpointed)]
            parent = state.ordered_versions()[0]
            pe = evals[parent.version_id]
            if not adapters:
                print(f"{seed:4} {recipe:6}  {pe.score:6.3f}  (no update: nothing to learn from)")
                continue
            ce = evals[adapters[0].version_id]
            rows.append((seed, recipe, pe.score, ce.score))
            print(f"{seed:4} {recipe:6}  {pe.score:6.3f}  {ce.score:6.3f}  {ce.score - pe.score:+6.3f}   "
                  f"{pe.metrics.get('valid', 0):.2f}/{ce.metrics.get('valid', 0):.2f}   "
                  f"{pe.metrics.get('distinct_outputs', 0):4.0f}/{ce.metrics.get('distinct_outputs', 0):<4.0f}    "
                  f"{len(adapters[0].training_data):5}   {wall:6.0f}", flush=True)
    for recipe in recipes:
        diffs = [c - p for _, r, p, c in rows if r == recipe]
        if diffs:
            up = sum(d > 0 for d in diffs)
            print(f"{recipe}: mean diff {sum(diffs) / len(diffs):+.3f} over {len(diffs)} seeds; child above parent in {up} of {len(diffs)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--evidence", action="store_true", help="one rft and one grpo update per seed on scrna-denoise, default model")
    ap.add_argument("--models", default="tiny,smollm2", help="models for the speed table")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--steps", type=int, default=None, help="LoRA steps per update [speed: 4, evidence: 8, the engine's default]")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--recipes", default="rft,grpo")
    a = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if a.evidence:
        evidence([int(s) for s in a.seeds.split(",")], a.recipes.split(","), a.device, a.steps or 8)
    else:
        speed(a.models.split(","), a.device, a.steps or 4)


if __name__ == "__main__":
    main()
