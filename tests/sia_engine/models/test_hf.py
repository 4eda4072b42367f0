"""The Hugging Face backend on the tiny model: generation, LoRA training, adapters from the log."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sia_engine.domain.events import AdapterCheckpointed, decode_envelope
from sia_engine.domain.history import rebuild
from sia_engine.domain.scaffold import Decoding
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig, load_adapter
from sia_engine.models.hf import export_adapter
from sia_engine.models.presets import tiny_model
from sia_engine.models.protocol import LoraSettings, Message, Request, TrainExample
from store import Store
from store.blobs import canonical_safetensors
from tests.loop_helpers import TASK

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = [TrainExample((Message("user", f"What is {a} + 1?"),), str(a + 1)) for a in range(8)]
PROMPT = (Message("system", "Add."), Message("user", "What is 2 + 2?"))


def test_generation_is_deterministic_and_seeded() -> None:
    m = tiny_model()
    greedy = [Request(PROMPT, Decoding(max_new_tokens=6), seed=0)] * 3
    a, b = m.generate(greedy), tiny_model().generate(greedy)
    assert a == b and a[0] == a[1]
    sampled = [Request(PROMPT, Decoding(temperature=1.0, max_new_tokens=12), seed=s) for s in (1, 1, 2)]
    x = m.generate(sampled)
    assert x[0] == x[1] and x[0] != x[2]
    assert all(g.n_tokens <= 12 for g in x)


def test_training_is_deterministic_and_changes_the_model() -> None:
    m = tiny_model()
    before = m.logits(PROMPT)
    t1 = m.train_adapter(EXAMPLES, LoraSettings(steps=10, lr=1e-2), seed=3)
    t2 = m.train_adapter(EXAMPLES, LoraSettings(steps=10, lr=1e-2), seed=3)
    t3 = m.train_adapter(EXAMPLES, LoraSettings(steps=10, lr=1e-2), seed=4)
    assert canonical_safetensors(t1.tensors) == canonical_safetensors(t2.tensors) != canonical_safetensors(t3.tensors)
    assert t1.metrics["loss_last"] < t1.metrics["loss_first"]
    assert torch.equal(m.logits(PROMPT), before)  # training leaves the served weights alone
    assert t1.peft_config["r"] == 8 and sorted(t1.peft_config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]


TRAIN_CHILD = """
import hashlib, sys
sys.path.insert(0, {root!r})
from sia_engine.models.presets import tiny_model
from sia_engine.models.protocol import LoraSettings
from store.blobs import canonical_safetensors
from tests.sia_engine.models.test_hf import EXAMPLES
t = tiny_model().train_adapter(EXAMPLES, LoraSettings(steps=6), seed=11)
print(hashlib.sha256(canonical_safetensors(t.tensors)).hexdigest())
"""


def test_training_is_bit_identical_across_processes() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    outs = {subprocess.run([sys.executable, "-c", TRAIN_CHILD.format(root=str(ROOT))], env=env, capture_output=True, text=True, check=True).stdout.strip() for _ in range(2)}
    assert len(outs) == 1 and len(next(iter(outs))) == 64


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A loop run with the weights lever only, and the live model it ran with."""
    path = tmp_path_factory.mktemp("hf") / "store"
    model = tiny_model()
    with Store.create(path) as s:
        config = LoopConfig(task="arith", iterations=1, levers=("weights",), lora=LoraSettings(steps=6, lr=1e-2))
        Loop(s, task=TASK, model=model, feedback=RulePolicy(), config=config).run()
    return path, model


def test_rebuilt_agent_gives_bit_identical_logits(trained_store) -> None:  # type: ignore[no-untyped-def]
    path, live = trained_store
    with Store.open(path) as s:
        [ev] = [decode_envelope(e) for e in s.log.read("main", kinds=["adapter_checkpointed"])]
        assert isinstance(ev, AdapterCheckpointed)
        state = rebuild(s.log, "main")[0]
        cand = state.versions[ev.version_id]
        adapter = load_adapter(s.blobs, cand.adapter)
    assert adapter is not None
    live.set_adapter(adapter)  # what the loop served the candidate with
    live_logits = live.logits(TASK.messages(cand.scaffold, TASK.episodes("val")[0]))
    fresh = tiny_model()  # a new agent rebuilt from the log alone
    fresh.set_adapter(adapter)
    rebuilt_logits = fresh.logits(TASK.messages(cand.scaffold, TASK.episodes("val")[0]))
    assert torch.equal(live_logits, rebuilt_logits)
    fresh.set_adapter(None)
    assert not torch.equal(fresh.logits(TASK.messages(cand.scaffold, TASK.episodes("val")[0])), rebuilt_logits)


def test_saved_adapter_loads_with_peft_itself(trained_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from peft import PeftModel

    path, _ = trained_store
    with Store.open(path) as s:
        [ev] = [decode_envelope(e) for e in s.log.read("main", kinds=["adapter_checkpointed"])]
        adapter = load_adapter(s.blobs, ev.blob)  # type: ignore[attr-defined]
    assert adapter is not None
    export_adapter(adapter, str(tmp_path / "adapter"))
    ours = tiny_model()
    ours.set_adapter(adapter)
    theirs = tiny_model()
    peft_model = PeftModel.from_pretrained(theirs.base, str(tmp_path / "adapter")).eval()
    ids = torch.tensor([ours.prompt_ids(PROMPT)])
    with torch.no_grad():
        assert torch.equal(peft_model(input_ids=ids).logits[0], ours.logits(PROMPT))
    assert hashlib.sha256(adapter.tensors).hexdigest() == adapter.blob


def test_adapter_blob_carries_its_peft_config(trained_store) -> None:  # type: ignore[no-untyped-def]
    path, _ = trained_store
    with Store.open(path) as s:
        [ev] = [decode_envelope(e) for e in s.log.read("main", kinds=["adapter_checkpointed"])]
        adapter = load_adapter(s.blobs, ev.blob)  # type: ignore[attr-defined]
    assert adapter is not None and adapter.peft_config == ev.peft_config  # type: ignore[attr-defined]
