"""`sia rebuild`: a runnable agent version from the log, every part checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from replay.agent import rebuild_agent
from replay.errors import RebuildMismatch
from sia_engine.cli.main import main
from sia_engine.domain.events import AdapterCheckpointed, decode_envelope
from sia_engine.domain.scaffold import Scaffold
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.models.presets import tiny_model
from sia_engine.models.protocol import LoraSettings, Message
from store import Store
from store.errors import BlobCorrupt
from tests.loop_helpers import TASK


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("rebuild") / "store"
    model = tiny_model()
    with Store.create(path) as s:
        cfg = LoopConfig(task="arith", iterations=1, levers=("weights",), samples=2, train_episodes=4, val_episodes=2,
                         lora=LoraSettings(steps=2, lr=1e-2))
        Loop(s, task=TASK, model=model, feedback=RulePolicy(), config=cfg).run()
        [ev] = [decode_envelope(e) for e in s.log.read("main", kinds=["adapter_checkpointed"])]
    assert isinstance(ev, AdapterCheckpointed)
    return path, ev


def test_rebuilt_agent_loads_with_peft_and_matches_the_log(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from peft import PeftModel

    path, ev = trained
    r = CliRunner().invoke(main, ["rebuild", ev.version_id[:10], "--out", str(tmp_path / "agent"), "--model", "tiny", "--store", str(path), "--json"])
    assert r.exit_code == 0, r.output
    agent = json.loads((tmp_path / "agent" / "agent.json").read_text())
    assert agent["version"] == ev.version_id and agent["adapter"] == ev.blob
    assert agent["base_model"]["id"] == "tiny" and agent["base_model"]["weights_hash"] == tiny_model().ref.weights_hash
    assert agent["provenance"]["recipe"] == ev.recipe and agent["provenance"]["training_data"] == list(ev.training_data)
    Scaffold(**json.loads((tmp_path / "agent" / "scaffold.json").read_text()))  # a valid scaffold document
    cfg = json.loads((tmp_path / "agent" / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "tiny"
    base = tiny_model()
    peft = PeftModel.from_pretrained(base.base, str(tmp_path / "agent" / "adapter"))
    live = tiny_model()
    from sia_engine.loop.loop import load_adapter

    with Store.open(path, read_only=True) as s:
        live.set_adapter(load_adapter(s.blobs, ev.blob))
    msgs = (Message("user", "What is 2 + 2?"),)
    ids = torch.tensor([live.prompt_ids(msgs)])
    with torch.no_grad():
        assert torch.equal(peft(input_ids=ids).logits[0], live.logits(msgs))


def test_an_event_about_a_version_names_it(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``BRANCH#SEQ`` of the adapter's checkpoint rebuilds the version it trained (a README tour
    names it so: the version id depends on the floating-point bits of the machine that trained it);
    an event about no version is refused, naming what to give."""
    path, ev = trained
    with Store.open(path, read_only=True) as s:
        [env] = s.log.read("main", kinds=["adapter_checkpointed"])
        agent = rebuild_agent(s, f"main#{env.seq}", tmp_path / "a")
        assert agent["version"] == ev.version_id and agent["adapter"] == ev.blob and agent["branch"] == "main"
        with pytest.raises(RebuildMismatch, match=r"an event \(main#0\) that names none; give a version id or prefix, or the ref"):
            rebuild_agent(s, "main#0", tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("ref", ["main#\u00b2", "main#\u0663", "main#\uff13", "ma\x1b[31min#3", "main#3\x1b]0;x\x07"])
def test_a_ref_with_other_digits_or_terminal_escapes_is_one_plain_error(trained, tmp_path: Path, ref: str) -> None:  # type: ignore[no-untyped-def]
    """Seqs are ASCII digits ('\u00b2' crashed int(), '\u0663' and '\uff13' were read as 3); what the user typed is
    quoted with its control characters escaped, so the terminal acts on none of them."""
    path, _ = trained
    r = CliRunner().invoke(main, ["rebuild", ref, "--out", str(tmp_path / "agent"), "--store", str(path)])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "\x1b" not in r.output and "\x07" not in r.output, r.output
    assert not (tmp_path / "agent").exists()


def test_another_base_model_is_refused(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, ev = trained
    other = tiny_model(seed=1).ref.weights_hash
    with Store.open(path, read_only=True) as s, pytest.raises(RebuildMismatch) as e:
        rebuild_agent(s, ev.version_id, tmp_path / "x", base_weights_hash=other)
    assert str(e.value) == (f"base model 'tiny' weights sha256 differs from the log: recorded {ev.base_model.weights_hash}, "
                            f"found {other}; the model at hand is not the one this history was recorded with")
    assert not (tmp_path / "x").exists()  # nothing written


def test_a_damaged_adapter_blob_is_named(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    path, ev = trained
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    with Store.open(copy, read_only=True) as s:
        blob = s.blobs.path(ev.blob)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    r = CliRunner().invoke(main, ["rebuild", ev.version_id, "--out", str(tmp_path / "y"), "--store", str(copy)])
    assert r.exit_code == 2 and ev.blob in r.output and not (tmp_path / "y").exists()  # nothing written
    with Store.open(copy, read_only=True) as s, pytest.raises(BlobCorrupt):
        rebuild_agent(s, ev.version_id, tmp_path / "z")
