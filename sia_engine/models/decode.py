"""Batched, deterministic sampling for a local causal LM (``HFModel.generate``).

One call is one batch. Its rows are the requests' samples in order (a request of ``n`` samples
gives ``n`` rows); row ``j`` of a request draws from its own ``torch.Generator`` seeded with the
request's ``seed + j``, so its stream of random numbers never depends on the other rows. The
batch's composition still shapes the arithmetic (a matrix product over 32 rows does not round as
one over 4), which is why the engine plans batches as a pure function of the iteration and
records each row's batch and place: the same batch gives the same outputs, bit for bit.

How the forward pass is kept near the machine's limit:

- the prompts' common prefix (system prompt, worked examples) is encoded once, at batch 1, and
  every row reads its keys and values from there; each distinct prompt's remainder is encoded
  once, then its rows (samples) share it;
- a key/value cache written in place (never concatenated step by step), grown by doubling;
- rows that finished leave the batch (compacted once a quarter of it is done);
- stop strings are checked on each row's decoded tail, one token's text at a time, never by
  decoding whole rows at every step; sampling is one uniform number per row (inverse CDF).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import msgspec
import torch
from transformers.cache_utils import Cache, DynamicLayer

__all__ = ["Row", "RowOutput", "sample_rows", "common_prefix"]


class Row(msgspec.Struct, frozen=True):
    """One sampled row: its prompt's token ids, its generator's seed and its decoding."""

    prompt: tuple[int, ...]
    seed: int
    temperature: float
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()


class RowOutput(msgspec.Struct, frozen=True):
    tokens: tuple[int, ...]  # generated, the end-of-sequence token left out
    finish: str  # "stop" (end of sequence or a stop string) or "length"


class _Layer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A key/value cache layer written in place (a dynamic layer concatenates, copying the whole
    cache at every step). Its tensors start with room for the prompt and ``GROW`` new tokens and
    double when full, up to ``limit`` positions: memory follows what the rows generate, not the
    worst case their ``max_new_tokens`` allows, and copies stay a constant cost per token."""

    GROW = 64

    def __init__(self, capacity: int, limit: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.capacity = min(capacity, limit)
        self.limit = limit
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        b, h, _, d = key_states.shape
        self.device = key_states.device
        self.kbuf = key_states.new_zeros(b, h, self.capacity, d)
        self.vbuf = value_states.new_zeros(b, h, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        t = key_states.shape[-2]
        if self.length + t > self.capacity:
            self.capacity = min(max(self.length + t, 2 * self.capacity), self.limit)
            more = self.capacity - self.kbuf.shape[2]
            self.kbuf = torch.cat([self.kbuf, self.kbuf.new_zeros(*self.kbuf.shape[:2], more, self.kbuf.shape[3])], dim=2)
            self.vbuf = torch.cat([self.vbuf, self.vbuf.new_zeros(*self.vbuf.shape[:2], more, self.vbuf.shape[3])], dim=2)
        self.kbuf[:, :, self.length : self.length + t] = key_states
        self.vbuf[:, :, self.length : self.length + t] = value_states
        self.length += t
        self._views()
        return self.kbuf[:, :, : self.length], self.vbuf[:, :, : self.length]

    def _views(self) -> None:
        self.keys = self.kbuf[:, :, : self.length]
        self.values = self.vbuf[:, :, : self.length]

    def get_seq_length(self, *args: Any, **kwargs: Any) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.kbuf = self.kbuf.index_select(0, indices)
            self.vbuf = self.vbuf.index_select(0, indices)
            self._views()


def common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """The length of the longest prefix every prompt shares, leaving each at least one token."""
    if not prompts:
        return 0
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for i in range(max(n, 0)):
        if any(p[i] != first[i] for p in prompts):
            return i
    return max(n, 0)


def _cache_kwarg(net: Any) -> str:
    """The forward keyword that takes the cache (``cache`` in newer transformers)."""
    base = net.get_base_model() if hasattr(net, "get_base_model") else net
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


class _Batch:
    """The cache, attention mask and positions of the rows still generating."""

    def __init__(self, net: Any, rows: Sequence[Row], pad: int, device: str) -> None:
        self.net, self.device = net, device
        self.key = _cache_kwarg(net)
        distinct = list(dict.fromkeys(r.prompt for r in rows))
        self.source = torch.tensor([distinct.index(r.prompt) for r in rows], device=device)
        c = common_prefix(distinct)
        width = c + max(len(p) - c for p in distinct)
        capacity = width + max(r.max_new_tokens for r in rows)
        layers = [_Layer(width + _Layer.GROW, capacity) for _ in range(net.config.num_hidden_layers)]
        self.cache = Cache(layers=layers)  # type: ignore[arg-type]
        if c:  # the shared prefix, once
            self._forward(torch.tensor([distinct[0][:c]], device=device), None, None, torch.arange(c, device=device))
            self.cache.batch_select_indices(torch.zeros(len(distinct), dtype=torch.long, device=device))
        s = width - c
        ids = torch.full((len(distinct), s), pad, dtype=torch.long)
        mask = torch.zeros(len(distinct), capacity, dtype=torch.long)
        mask[:, :c] = 1
        pos = torch.zeros(len(distinct), s, dtype=torch.long)
        for d, p in enumerate(distinct):
            rest = p[c:]
            ids[d, s - len(rest) :] = torch.tensor(rest)
            mask[d, width - len(rest) : width] = 1
            pos[d, s - len(rest) :] = torch.arange(c, len(p))
        self.mask = mask.to(device)
        logits = self._forward(ids.to(device), self.mask[:, :width], pos.to(device), torch.arange(c, width, device=device))
        self.width = width
        self.cache.batch_select_indices(self.source)  # each row reads its prompt's keys and values
        self.mask = self.mask.index_select(0, self.source)
        self.logits = logits.index_select(0, self.source)
        self.next_pos = torch.tensor([len(r.prompt) for r in rows], device=device)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor | None, pos: torch.Tensor | None, cache_pos: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = {self.key: self.cache, "use_cache": True, "cache_position": cache_pos, "logits_to_keep": 1}
        if mask is not None:
            kwargs["attention_mask"] = mask
        if pos is not None:
            kwargs["position_ids"] = pos
        out = self.net(input_ids=ids, **kwargs)
        logits: torch.Tensor = out.logits[:, -1].float()
        return logits

    def step(self, tokens: torch.Tensor) -> None:
        """Feed one token per row; ``self.logits`` becomes the next step's."""
        slot = self.width
        self.mask[:, slot] = 1
        self.width += 1
        self.logits = self._forward(tokens[:, None], self.mask[:, : self.width], self.next_pos[:, None],
                                    torch.tensor([slot], device=self.device))
        self.next_pos = self.next_pos + 1

    def keep(self, index: torch.Tensor) -> None:
        self.cache.batch_select_indices(index)
        self.mask = self.mask.index_select(0, index)
        self.next_pos = self.next_pos.index_select(0, index)
        self.logits = self.logits.index_select(0, index)


def _pick(logits: torch.Tensor, rows: Sequence[Row], uniforms: torch.Tensor) -> torch.Tensor:
    """The next token of each row: argmax at temperature 0, else one draw (inverse CDF with the
    row's uniform number) from its distribution at its temperature, top-k and top-p; rows with
    the same top-k and top-p are drawn together, over their k most likely tokens only."""
    out = logits.argmax(dim=-1)
    groups: dict[tuple[int, float], list[int]] = {}
    for i, r in enumerate(rows):
        if r.temperature > 0:
            groups.setdefault((r.top_k, r.top_p), []).append(i)
    dev = logits.device
    for (k, p), members in groups.items():
        sel = torch.tensor(members, device=dev)
        lg = logits.index_select(0, sel) / torch.tensor([rows[i].temperature for i in members], device=dev)[:, None]
        if k > 0 or p < 1.0:  # most likely first
            vals, idx = lg.topk(min(k, lg.shape[-1]), dim=-1) if k > 0 else lg.sort(dim=-1, descending=True)
        else:
            vals, idx = lg, None
        probs = torch.softmax(vals, dim=-1)
        if p < 1.0:  # keep the smallest set whose mass reaches p
            probs = probs.masked_fill((probs.cumsum(-1) - probs) >= p, 0.0)
        cdf = probs.cumsum(dim=-1)
        x = (uniforms.index_select(0, sel).to(cdf.dtype) * cdf[:, -1])[:, None]
        j = torch.searchsorted(cdf, x, right=True).clamp(max=cdf.shape[-1] - 1)
        out[sel] = (j if idx is None else idx.gather(1, j)).squeeze(1)
    return out


def sample_rows(net: Any, tok: Any, rows: Sequence[Row], *, device: str = "cpu") -> list[RowOutput]:
    """Generate every row of one batch; outputs in row order (see the module's docstring)."""
    if not rows:
        return []
    eos, pad = tok.eos_token_id, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gens = [torch.Generator().manual_seed(r.seed) for r in rows]
    pieces: dict[int, str] = {}
    tokens: list[list[int]] = [[] for _ in rows]
    tails = [""] * len(rows)
    finish = ["length"] * len(rows)
    batch = _Batch(net, rows, pad, device)
    live = list(range(len(rows)))  # rows of the batch tensors, in order
    done: set[int] = set()  # finished rows still in the batch tensors
    while True:
        uniforms = torch.tensor([torch.rand(1, generator=gens[i], dtype=torch.float64).item()
                                 if i not in done and rows[i].temperature > 0 else 0.0 for i in live])
        picked = _pick(batch.logits, [rows[i] for i in live], uniforms.to(device)).tolist()
        for i, t in zip(live, picked, strict=True):
            if i in done:
                continue
            r = rows[i]
            if t == eos:
                finish[i] = "stop"
                done.add(i)
                continue
            tokens[i].append(t)
            if r.stop:
                if t not in pieces:
                    pieces[t] = tok.decode([t], skip_special_tokens=True)
                tails[i] = (tails[i] + pieces[t])[-(max(map(len, r.stop)) + 64):]
                if any(s in tails[i] for s in r.stop):
                    finish[i] = "stop"
                    done.add(i)
                    continue
            if len(tokens[i]) >= r.max_new_tokens:
                done.add(i)
        if len(done) == len(live):
            break
        if len(done) * 4 >= len(live):  # a quarter of the batch is idle: leave it out
            keep = [a for a, i in enumerate(live) if i not in done]
            batch.keep(torch.tensor(keep, device=device))
            picked = [picked[a] for a in keep]
            live = [live[a] for a in keep]
            done = set()
        batch.step(torch.tensor([t if i not in done else pad for i, t in zip(live, picked, strict=True)], device=device))
    return [RowOutput(tuple(t), f) for t, f in zip(tokens, finish, strict=True)]
