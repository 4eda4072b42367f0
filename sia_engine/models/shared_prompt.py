"""Scores of a closed set of options that read the prompt once (a local model's KV cache)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sia_engine.models.protocol import Message

__all__ = ["score_options_shared"]


def score_options_shared(model: Any, messages: Sequence[Message], options: Sequence[str], chunk: int = 16) -> list[tuple[float, int]]:
    """``score_options`` without reading the prompt once per option: the prompt once per
    ``chunk`` options (its KV cache repeated), the options as one right-padded batch. A
    closed-set task's answers (``sia_engine.models.options``) take this path: 16 charges of a
    500-token case cost one pass of the case, not 16. Equal to ``score_options`` up to float
    rounding (another batch shape); a run and its re-execution take the same path."""
    prompt = model.prompt_ids(messages)
    ids = [list(model.tok(t, add_special_tokens=False)["input_ids"]) for t in options]
    if not prompt or not all(ids):
        return list(model.score_options(messages, options))
    out: list[tuple[float, int]] = []
    pad = model.tok.pad_token_id if model.tok.pad_token_id is not None else 0
    for lo in range(0, len(ids), chunk):
        part = ids[lo : lo + chunk]
        width = max(map(len, part))
        with torch.no_grad(), model._serving():
            first = model.net(input_ids=torch.tensor([prompt], device=model.device), use_cache=True)
            start = torch.log_softmax(first.logits[0, -1].float(), dim=-1)
            name = "cache" if "cache" in first else "past_key_values"  # transformers 5.2x renamed it
            cache = first[name]
            cache.batch_repeat_interleave(len(part))
            x = torch.tensor([o + [pad] * (width - len(o)) for o in part], device=model.device)
            mask = torch.tensor([[1] * (len(prompt) + len(o)) + [0] * (width - len(o)) for o in part], device=model.device)
            logp = torch.log_softmax(model.net(input_ids=x, attention_mask=mask, **{name: cache}).logits.float(), dim=-1)
        for b, o in enumerate(part):
            total = start[o[0]] + sum((logp[b, t - 1, o[t]] for t in range(1, len(o))), torch.tensor(0.0))
            out.append((float(total), len(o)))
    return out
