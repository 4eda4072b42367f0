"""GRPO for ``HFModel`` through TRL's ``GRPOTrainer``, on recorded samples.

The loop has already drawn k samples per episode from the head version and scored them with the
task's own scorer; those samples are the group that GRPO's advantages are relative to. TRL's
trainer is given them through its ``rollout_func`` (it generates nothing itself), and its reward
function returns the recorded scores (nothing is re-scored), so every completion and reward that
trains the adapter is an event in the log. TRL computes the group-relative advantages, the
clipped policy-gradient loss and the optimiser steps, on the peft adapter that ``HFModel`` made
trainable. With ``beta = 0`` (TRL's default) no reference model is kept.

Deterministic on CPU for a seed (TRL's sampler and torch are seeded from it); tested across
processes.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from sia_engine.models.protocol import LoraSettings, TrainExample

__all__ = ["train_grpo", "groups_of"]


def groups_of(examples: Sequence[TrainExample]) -> dict[str, list[TrainExample]]:
    """Examples by group, in first-seen order; every group must hold the same number of samples."""
    groups: dict[str, list[TrainExample]] = {}
    for ex in examples:
        if ex.reward is None:
            raise ValueError(f"grpo needs a reward on every sample; {ex.source or 'an example'} has none")
        groups.setdefault(ex.group or ex.source, []).append(ex)
    sizes = {len(v) for v in groups.values()}
    if len(sizes) != 1 or min(sizes) < 2:
        raise ValueError(f"grpo needs groups of equal size >= 2 (k samples per episode); got sizes {sorted(sizes)}")
    return groups


def train_grpo(model: Any, adapter: str, examples: Sequence[TrainExample], settings: LoraSettings, *, seed: int,
               on_step: Callable[[int, float], None] | None = None) -> list[dict[str, float]]:
    """Train the active adapter ``adapter`` of ``model.peft`` (``model`` is the ``HFModel`` whose
    ``train_adapter`` calls this; not imported here, which would make a cycle) with GRPO; the
    curve, one dict a step."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental
    groups = groups_of(examples)
    k = len(next(iter(groups.values())))
    prompt_text = _prompt_texts(model.tok, groups)
    encoded = _encoded(model, groups, settings.max_length)
    rollout, reward = _recorded_rollout(groups, prompt_text, encoded, k)
    curve: list[dict[str, float]] = []
    per_step = k * max(1, min(len(groups), settings.batch_size // k or 1))
    max_completion = max(len(completion) for enc in encoded.values() for _, completion in enc)
    _train(model, [prompt_text[g] for g in groups], settings, seed=seed, k=k, per_step=per_step, max_completion=max_completion,
           rollout=rollout, reward=reward, callback=_curve_callback(curve, on_step))
    return curve


def _prompt_texts(tok: Any, groups: dict[str, list[TrainExample]]) -> dict[str, str]:
    """Each group's prompt as the chat template renders it (with the recorded prefix); distinct."""
    prompt_text = {g: tok.apply_chat_template([{"role": m.role, "content": m.content} for m in exs[0].messages],
                                             add_generation_prompt=True, tokenize=False) + exs[0].prefix
                   for g, exs in groups.items()}
    if len(set(prompt_text.values())) != len(groups):
        raise ValueError("two groups share one prompt: grpo groups must be distinct prompts")
    return prompt_text


def _encoded(model: Any, groups: dict[str, list[TrainExample]], max_length: int) -> dict[str, list[tuple[list[int], list[int]]]]:
    """Per group, each sample's token ids split into prompt | completion (labels are -100 on the prompt)."""
    encoded: dict[str, list[tuple[list[int], list[int]]]] = {}
    for g, exs in groups.items():
        for ex in exs:
            ids, labels = model.encode_example(ex, max_length)
            cut = next(i for i, lab in enumerate(labels) if lab != -100)
            encoded.setdefault(g, []).append((ids[:cut], ids[cut:]))
    return encoded


def _recorded_rollout(groups: dict[str, list[TrainExample]], prompt_text: dict[str, str],
                      encoded: dict[str, list[tuple[list[int], list[int]]]], k: int) -> tuple[Callable[..., dict[str, list[Any]]], Callable[..., list[float]]]:
    """TRL's ``rollout_func`` and reward function, both answering from the recorded samples."""
    by_prompt = {t: g for g, t in prompt_text.items()}
    rewards = {(g, j): float(ex.reward or 0.0) for g, exs in groups.items() for j, ex in enumerate(exs)}

    def rollout(prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        """The recorded samples, in order, for each prompt TRL asks about (it repeats each k times)."""
        seen: dict[str, int] = {}
        out: dict[str, list[Any]] = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "sample": []}
        for p in prompts:
            g = by_prompt[p]
            j = seen.get(g, 0) % k
            seen[g] = seen.get(g, 0) + 1
            prompt, completion = encoded[g][j]
            out["prompt_ids"].append(prompt)
            out["completion_ids"].append(completion)
            out["logprobs"].append([0.0] * len(completion))  # unused: no vLLM importance correction
            out["sample"].append(f"{g}\x00{j}")
        return out

    def reward(completions: list[Any], sample: list[str], **_: Any) -> list[float]:
        return [rewards[(s.split("\x00")[0], int(s.split("\x00")[1]))] for s in sample]

    return rollout, reward


def _curve_callback(curve: list[dict[str, float]], on_step: Callable[[int, float], None] | None) -> Any:
    """A trainer callback that appends each logged step to ``curve`` (and tells ``on_step``)."""
    from transformers import TrainerCallback

    class _Curve(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs and "reward" in logs:
                point = {"step": float(state.global_step), "loss": float(logs["loss"]), "reward": float(logs["reward"]),
                         "reward_std": float(logs.get("reward_std", 0.0)), "grad_norm": float(logs.get("grad_norm", 0.0))}
                curve.append(point)
                if on_step:
                    on_step(state.global_step, point["loss"])

    return _Curve()


def _train(model: Any, prompts: list[str], settings: LoraSettings, *, seed: int, k: int, per_step: int, max_completion: int,
           rollout: Callable[..., dict[str, list[Any]]], reward: Callable[..., list[float]], callback: Any) -> None:
    """TRL's ``GRPOTrainer`` over ``prompts`` (one row each) on ``model.peft``, quietly."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer

    ds = Dataset.from_list([{"prompt": p} for p in prompts])
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="sia-grpo-") as out_dir, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renames that TRL still calls
        args = GRPOConfig(
            output_dir=out_dir, per_device_train_batch_size=per_step, num_generations=k, max_steps=settings.steps,
            max_completion_length=max_completion, learning_rate=settings.lr, weight_decay=0.0, lr_scheduler_type="constant",
            beta=settings.grpo_beta, epsilon=settings.grpo_epsilon, logging_steps=1, report_to=[], seed=seed, data_seed=seed,
            save_strategy="no", use_cpu=model.device == "cpu", bf16=model.device == "cuda", disable_tqdm=True,
            dataloader_num_workers=0, gradient_checkpointing=False, remove_unused_columns=False,
        )
        reward_funcs: Any = reward  # TRL types reward functions as Callable[..., list[float | None]]
        trainer = GRPOTrainer(model=model.peft, reward_funcs=reward_funcs, args=args, train_dataset=ds, processing_class=model.tok,
                              rollout_func=rollout, callbacks=[callback])
        trainer.remove_callback(PrinterCallback)  # the curve is recorded; nothing is printed
        try:
            trainer.train()
        finally:
            hf_logging.set_verbosity(verbosity)
