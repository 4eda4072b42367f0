"""``HFModel``: a local Hugging Face causal LM with peft LoRA adapters (both levers).

Generation takes one call as one batch, every row sampled from its own seeded generator
(``sia_engine.models.decode``); the generation before batching stays as ``generate_serial``.
Training builds a fresh LoRA adapter (from the parent adapter's weights when given) with a recipe: ``sft`` and ``rft`` learn completions by cross-entropy (rft's are
selected samples), ``grpo`` runs TRL's GRPO trainer on recorded sampled outputs and their
rewards (``sia_engine.models.grpo``). Deterministic for a seed on CPU; the tensors come back as
safetensors bytes. Serving an adapter always goes through
``set_adapter`` from those bytes, so the live agent and an agent rebuilt from the log load the
very same weights the same way: their logits are bit-identical.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import safetensors.torch
import torch
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_config,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)

from sia_engine.domain.events import ModelRef
from sia_engine.models.decode import Row, RowOutput, sample_rows
from sia_engine.models.options import scored_texts, with_options
from sia_engine.models.shared_prompt import score_options_shared
from sia_engine.models.packing import packed_attention
from sia_engine.models.protocol import (
    Adapter,
    Generation,
    LoraSettings,
    Message,
    Recipe,
    Request,
    TrainedAdapter,
    TrainExample,
)

__all__ = ["HFModel", "peft_config_dict", "export_adapter", "resolve_device"]

_MAX_LOADED = 8  # adapters kept in memory at once
# top_k 0 in a decoding is the backend's default: transformers' generate samples from the 50 most
# likely tokens when none is named, and every run recorded before batched generation drew so
DEFAULT_TOP_K = 50
# peft calls a transformers method that transformers 5 deprecates; nothing for our users to act on
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
_IDLE = "sia_idle"


def peft_config_dict(config: LoraConfig) -> dict[str, Any]:
    """A peft config as plain JSON values (sets become sorted lists, enums their values)."""
    raw = config.to_dict()
    return json.loads(json.dumps(raw, sort_keys=True, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))


def export_adapter(adapter: Adapter, folder: str) -> None:
    """Write an adapter in peft's own layout (``PeftModel.from_pretrained(base, folder)`` loads it)."""
    import os

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "adapter_model.safetensors"), "wb") as f:
        f.write(adapter.tensors)
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(adapter.peft_config, f, indent=2, sort_keys=True)


def _messages(msgs: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in msgs]


def resolve_device(device: str = "auto") -> tuple[str, torch.dtype]:
    """``auto`` -> CUDA when present, else CPU; bf16 weights on a GPU, fp32 on a CPU."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA device here: use --device cpu or auto")
    return device, (torch.bfloat16 if device == "cuda" else torch.float32)


class HFModel:
    trains_weights = True

    def __init__(self, model: Any, tokenizer: Any, ref: ModelRef, *, label: str = "", device: str = "cpu") -> None:
        self.device, self.dtype = resolve_device(device)
        self.base = model.to(self.device, dtype=self.dtype).eval()
        self.tok = tokenizer
        self.ref = ref
        self.label = label  # e.g. "smoke-test model: random weights"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.tok.padding_side = "left"
        self.peft: PeftModel | None = None
        self._loaded: list[str] = []  # adapter names, oldest first
        self.active: str | None = None

    # -- prompts ------------------------------------------------------------------------------
    def prompt_ids(self, messages: Sequence[Message], prefix: str = "") -> list[int]:
        text = self.tok.apply_chat_template(_messages(messages), add_generation_prompt=True, tokenize=False)
        return list(self.tok(text + prefix, add_special_tokens=False)["input_ids"])

    def prompt_tokens(self, messages: Sequence[Message], prefix: str = "") -> int:
        return len(self.prompt_ids(messages, prefix))

    @property
    def net(self) -> Any:
        """The module that serves: the peft wrapper when adapters were ever added."""
        return self.peft if self.peft is not None else self.base

    def logits(self, messages: Sequence[Message], prefix: str = "") -> torch.Tensor:
        """Next-token logits over the prompt, [seq, vocab], under the active adapter."""
        ids = torch.tensor([self.prompt_ids(messages, prefix)], device=self.device)
        with torch.no_grad(), self._serving():
            return self.net(input_ids=ids).logits[0]

    def score_options(self, messages: Sequence[Message], options: Sequence[str]) -> list[tuple[float, int]]:
        """(sum of log-probabilities, tokens) of each option as the start of the answer to
        ``messages``, under the active adapter; one forward pass per option, deterministic."""
        prompt = self.prompt_ids(messages)
        out = []
        for text in options:
            ids = list(self.tok(text, add_special_tokens=False)["input_ids"])
            full = torch.tensor([prompt + ids], device=self.device)
            with torch.no_grad(), self._serving():
                logits = self.net(input_ids=full).logits[0, len(prompt) - 1 : -1].float()
            logp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids, device=self.device)[:, None])
            out.append((float(logp.sum()), len(ids)))
        return out

    def score_options_shared(self, messages: Sequence[Message], options: Sequence[str], chunk: int = 16) -> list[tuple[float, int]]:
        """``score_options`` reading the prompt once per ``chunk`` options (``sia_engine.models.shared_prompt``)."""
        return score_options_shared(self, messages, options, chunk)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    # -- adapters -----------------------------------------------------------------------------
    def _serving(self) -> Any:
        import contextlib

        if self.peft is not None and self.active is None:
            return self.peft.disable_adapter()
        return contextlib.nullcontext()

    def _ensure_peft(self, config: LoraConfig) -> PeftModel:
        if self.peft is None:
            # An idle adapter that is never deleted keeps peft valid when no other is loaded;
            # serving the base model bypasses adapters altogether (disable_adapter).
            with warnings.catch_warnings():
                # an adapter names its model by id, the base was loaded from a local folder: peft
                # warns of the rename; the engine checks the base by its weights' sha256 instead
                warnings.filterwarnings("ignore", message="The PEFT config's `base_model_name_or_path` was renamed")
                self.peft = get_peft_model(self.base, config, adapter_name=_IDLE)
        return self.peft

    def _add(self, name: str, config: LoraConfig) -> None:
        self._ensure_peft(config).add_adapter(name, config)
        self._loaded.append(name)
        while len(self._loaded) > _MAX_LOADED:
            old = self._loaded.pop(0)
            if old != self.active and self.peft is not None:
                self.peft.delete_adapter(old)

    def set_adapter(self, adapter: Adapter | None) -> None:
        if adapter is None:
            self.active = None
            if self.peft is not None:
                self.peft.set_adapter(_IDLE)
            return
        name = f"a{adapter.blob[:16]}"
        if name not in self._loaded:
            config = get_peft_config(dict(adapter.peft_config))
            assert isinstance(config, LoraConfig), f"adapter {adapter.blob} is not a LoRA adapter"
            self._add(name, config)
            assert self.peft is not None
            state = safetensors.torch.load(adapter.tensors)
            set_peft_model_state_dict(self.peft, state, adapter_name=name)
        assert self.peft is not None
        self.peft.set_adapter(name)
        self.peft.eval()
        self.active = name

    # -- generation ---------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """One call is one batch (``sia_engine.models.decode``): every request's samples are rows
        of it, row ``j`` of a request sampled from its own generator seeded ``seed + j``. At
        temperature 0 a request is one row, its ``n`` samples copies of it. A decoding's top_k
        0 samples from the ``DEFAULT_TOP_K`` most likely tokens, as transformers' generate does.
        A request with ``options`` is answered from them (``sia_engine.models.options``)."""
        if any(r.options for r in requests):
            return with_options(requests, self.generate, lambda r: self.score_options_shared(r.messages, scored_texts(r)))
        rows: list[Row] = []
        for r in requests:
            d = r.decoding
            prompt = tuple(self.prompt_ids(r.messages, r.prefix))
            rows += [Row(prompt, r.seed + j, d.temperature, d.top_p, d.top_k or DEFAULT_TOP_K, d.max_new_tokens, tuple(d.stop))
                     for j in range(r.n if d.temperature > 0 else 1)]
        with torch.no_grad(), self._serving():
            outs = iter(sample_rows(self.net, self.tok, rows, device=self.device))
        gens: list[Generation] = []
        for r in requests:
            if r.decoding.temperature > 0:
                gens += [self._finished(next(outs), r.decoding.stop) for _ in range(r.n)]
            else:
                gens += [self._finished(next(outs), r.decoding.stop)] * r.n
        return gens

    def _finished(self, out: RowOutput, stop: Sequence[str]) -> Generation:
        text = self.tok.decode(list(out.tokens), skip_special_tokens=True)
        finish = out.finish
        for s in stop:
            if s in text:
                text, finish = text[: text.index(s)], "stop"
        return Generation(text, n_tokens=len(out.tokens), finish=finish)

    def generate_serial(self, requests: Sequence[Request]) -> list[Generation]:
        """The generation before batching, kept for comparison and for histories recorded with
        it: sampled requests one at a time through ``transformers``' ``generate``, a request's
        ``n`` samples drawn together from ``torch.manual_seed(seed)``; greedy ones in batches of 16."""
        if any(r.options for r in requests):
            return with_options(requests, self.generate_serial, lambda r: self.score_options_shared(r.messages, scored_texts(r)))
        out: list[Generation] = []
        greedy: list[Request] = []
        for r in requests:
            if r.decoding.temperature > 0:
                out += self._serial_flush(greedy) + self._serial([r])
                greedy = []
            elif greedy and greedy[0].decoding != r.decoding:
                out += self._serial_flush(greedy)
                greedy = [r]
            else:
                greedy.append(r)
        return out + self._serial_flush(greedy)

    def _serial_flush(self, greedy: list[Request]) -> list[Generation]:
        out: list[Generation] = []
        for i in range(0, len(greedy), 16):
            chunk = greedy[i : i + 16]
            out += [g for r, g in zip(chunk, self._serial(chunk), strict=True) for _ in range(r.n)]
        return out

    def _serial(self, batch: list[Request]) -> list[Generation]:
        d = batch[0].decoding
        prompts = [self.prompt_ids(r.messages, r.prefix) for r in batch]
        width = max(map(len, prompts))
        pad = self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        kwargs: dict[str, Any] = {"max_new_tokens": d.max_new_tokens, "pad_token_id": pad, "do_sample": d.temperature > 0}
        if d.temperature > 0:
            kwargs.update(temperature=d.temperature, top_p=d.top_p, top_k=d.top_k or None, num_return_sequences=batch[0].n)
            torch.manual_seed(batch[0].seed)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.no_grad(), self._serving():
            out = self.net.generate(input_ids=ids, attention_mask=mask, **kwargs)
        eos = self.tok.eos_token_id
        gens = []
        for row in out[:, width:].tolist():
            n, finish = (row.index(eos), "stop") if eos in row else (len(row), "length")
            gens.append(self._finished(RowOutput(tuple(row[:n]), finish), d.stop))
        return gens

    # -- training -----------------------------------------------------------------------------
    def _ce_loss(self, batch: list[tuple[list[int], list[int]]], packing: bool) -> torch.Tensor:
        """Mean cross-entropy over the batch's completion tokens. Packed: the examples one after
        another in one sequence, each one's positions from 0 and attention within each
        (``sia_engine.models.packing``), its first label ignored (nothing before it is its own),
        so the loss is the padded batch's over the same tokens, with no padding computed."""
        assert self.peft is not None
        if packing:
            ids = [t for i, _ in batch for t in i]
            labels = [t for _, lab in batch for t in [-100, *lab[1:]]]
            pos = [p for i, _ in batch for p in range(len(i))]
            as_row = lambda x: torch.tensor([x], device=self.device)  # noqa: E731
            with packed_attention(self.base):
                out = self.peft(input_ids=as_row(ids), position_ids=as_row(pos), labels=as_row(labels), use_cache=False)
        else:
            width = max(len(i) for i, _ in batch)
            pad = self.tok.pad_token_id
            ids_t = torch.tensor([i + [pad] * (width - len(i)) for i, _ in batch], device=self.device)  # [b, t]
            labels_t = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch], device=self.device)
            mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch], device=self.device)
            out = self.peft(input_ids=ids_t, attention_mask=mask, labels=labels_t, use_cache=False)
        loss: torch.Tensor = out.loss
        return loss

    def encode_example(self, ex: TrainExample, max_length: int) -> tuple[list[int], list[int]]:
        """Token ids and labels (-100 on the prompt) of a prompt + completion + end of turn."""
        prompt = self.prompt_ids(ex.messages, ex.prefix)
        completion = list(self.tok(ex.completion, add_special_tokens=False)["input_ids"]) + [self.tok.eos_token_id]
        ids = (prompt + completion)[-max_length:]
        labels = ([-100] * len(prompt) + completion)[-max_length:]
        return ids, labels

    def _training_adapter(self, settings: LoraSettings, seed: int, parent: Adapter | None) -> tuple[str, LoraConfig]:
        """A fresh trainable adapter (the parent's weights when given), active, named for ``seed``."""
        config = LoraConfig(
            r=settings.r, lora_alpha=settings.alpha, target_modules=list(settings.target_modules),
            lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        )
        name = f"train{seed & 0xFFFFFF}"
        if name in self._loaded:
            assert self.peft is not None
            self.peft.delete_adapter(name)
            self._loaded.remove(name)
        self._ensure_peft(config)
        torch.manual_seed(seed)  # after the idle adapter exists: the same init whatever came before
        self._add(name, config)
        assert self.peft is not None
        if parent is not None:
            set_peft_model_state_dict(self.peft, safetensors.torch.load(parent.tensors), adapter_name=name)
        self.peft.set_adapter(name)
        for n, p in self.peft.named_parameters():
            p.requires_grad_(f".{name}." in n)
        return name, config

    def train_adapter(
        self,
        examples: Sequence[TrainExample],
        settings: LoraSettings,
        *,
        seed: int,
        parent: Adapter | None = None,
        on_step: Callable[[int, float], None] | None = None,
        recipe: Recipe = "sft",
    ) -> TrainedAdapter:
        if not examples:
            raise ValueError("no training examples: the training plan selected none")
        if settings.steps < 1:
            raise ValueError(f"steps must be at least 1, not {settings.steps}")
        name, config = self._training_adapter(settings, seed, parent)
        assert self.peft is not None
        try:
            if recipe == "grpo":
                from sia_engine.models.grpo import train_grpo

                curve = train_grpo(self, name, examples, settings, seed=seed, on_step=on_step)
            else:
                curve = self._train_ce(name, examples, settings, seed=seed, on_step=on_step)
        finally:
            self.peft.eval()
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in get_peft_model_state_dict(self.peft, adapter_name=name).items()}
        tensors = safetensors.torch.save(state)
        cfg = peft_config_dict(config)
        cfg["base_model_name_or_path"] = self.ref.id  # the model's name, never a local path
        self.peft.set_adapter(self.active or _IDLE)
        self.peft.delete_adapter(name)
        self._loaded.remove(name)
        self.peft.eval()
        losses = [c["loss"] for c in curve]
        metrics = {"loss_first": losses[0], "loss_last": losses[-1], "steps": float(len(curve)), "examples": float(len(examples))}
        rewards = [c["reward"] for c in curve if "reward" in c]
        if rewards:
            metrics.update(reward_first=rewards[0], reward_last=rewards[-1])
        return TrainedAdapter(tensors, cfg, metrics, tuple(curve), self.device, self.dtype_name)

    def _train_ce(self, name: str, examples: Sequence[TrainExample], settings: LoraSettings, *, seed: int,
                  on_step: Callable[[int, float], None] | None) -> list[dict[str, float]]:
        """Cross-entropy on the completions (sft, rft): AdamW, shuffled batches, seeded."""
        assert self.peft is not None
        params = [p for p in self.peft.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
        data = [self.encode_example(e, settings.max_length) for e in examples]
        order: list[int] = []
        rng = random.Random(seed)
        curve: list[dict[str, float]] = []
        self.peft.train()
        for step in range(settings.steps):
            batch, rewards = [], []
            for _ in range(min(settings.batch_size, len(data))):
                if not order:
                    order = list(range(len(data)))
                    rng.shuffle(order)
                k = order.pop()
                batch.append(data[k])
                rewards.append(examples[k].reward)
            with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.device == "cuda"):
                loss = self._ce_loss(batch, settings.packing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            point = {"step": float(step + 1), "loss": float(loss.item())}
            if all(r is not None for r in rewards):  # rft: the batch's mean recorded score
                point["reward"] = sum(r or 0.0 for r in rewards) / len(rewards)
            curve.append(point)
            if on_step:
                on_step(step + 1, curve[-1]["loss"])
        return curve
