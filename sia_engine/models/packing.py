"""Attention for packed training sequences: each example attended to on its own.

A packed batch is one sequence of examples, each one's positions starting at 0. transformers
can keep attention within examples by a block-diagonal mask, but scaled-dot-product attention
with an explicit mask takes a slower path on a CPU and computes every pair of tokens, across
examples too. ``packed`` (registered as an attention implementation of that name) instead cuts
the sequence where positions restart and runs causal attention on each example, no mask built:
the same result, the cost of the examples' own lengths. ``packed_attention(model)`` serves a
model with it for the duration of a ``with`` block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface

__all__ = ["PACKED", "packed_attention"]

PACKED = "sia_packed"


def _segments(position_ids: torch.Tensor, length: int) -> list[tuple[int, int]]:
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return list(zip(starts, [*starts[1:], length], strict=True))


def _attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    position_ids = kwargs.pop("position_ids", None)
    if position_ids is None or query.shape[0] != 1 or attention_mask is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    parts = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, **kwargs)[0]
             for a, b in _segments(position_ids, query.shape[2])]
    return torch.cat(parts, dim=1), None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None  # each example's attention is causal on its own


AttentionInterface.register(PACKED, _attention)
AttentionMaskInterface.register(PACKED, _no_mask)


@contextlib.contextmanager
def packed_attention(model: Any) -> Iterator[None]:
    """Serve ``model`` (a transformers model) with the packed attention inside the block."""
    before = model.config._attn_implementation
    model.set_attn_implementation(PACKED)
    try:
        yield
    finally:
        model.set_attn_implementation(before)
