"""Forgeries that every hash survives, each caught by the replay that re-runs the loop.

Each history here is rewritten the way anyone who can write the store's folder can: the events
recorded again through ``History`` into a fresh store (every id, parent link and hash
recomputed, the reducer satisfied, the blobs copied), with one fact changed and every version id
it changes renamed in every later event. ``sia verify`` passes on each; recorded replay (and for
a replaced adapter blob, only ``--retrain``) names the event and the field."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
import safetensors.numpy
from click.testing import CliRunner

from replay.recorded import AdapterDiffers, ReplayDivergence, replay_recorded
from replay.reexecute import software_differences
from sia_engine.cli.main import main
from sia_engine.domain.events import AdapterCheckpointed, Event, RunStarted, ScaffoldPatched, decode, decode_envelope, encode
from sia_engine.domain.history import History
from sia_engine.domain.integrity import verify_store
from sia_engine.domain.scaffold import PatchOp, apply_patch, scaffold_hash
from sia_engine.domain.state import AgentState, version_id
from sia_engine.errors import DataChanged
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.loop.task import Episode, Score
from sia_engine.models.presets import tiny_model
from sia_engine.models.protocol import LoraSettings
from store import BlobStore, Store
from tests.loop_helpers import TASK, format_then_content_errors, scripted

Change = Callable[[Event, AgentState, BlobStore], Event | None]


@pytest.fixture(scope="module")
def patched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scaffold-lever run: the rule policy patches the format, then adds examples."""
    path = tmp_path_factory.mktemp("forge") / "patched"
    with Store.create(path) as s:
        cfg = LoopConfig(task="arith", iterations=3, train_episodes=6, val_episodes=6, samples=2, levers=("scaffold",))
        Loop(s, task=TASK, model=scripted(format_then_content_errors), feedback=RulePolicy(), config=cfg).run()
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights-lever run of the tiny model: two real LoRA adapters, trained on the CPU."""
    path = tmp_path_factory.mktemp("forge") / "trained"
    with Store.create(path) as s:
        cfg = LoopConfig(task="arith", iterations=3, train_episodes=3, val_episodes=2, samples=2, levers=("weights",),
                         lora=LoraSettings(steps=2, lr=1e-2))
        Loop(s, task=TASK, model=tiny_model(), feedback=RulePolicy(), config=cfg).run()
    return path


def _renamed(e: Event, names: dict[str, str]) -> Event:
    if not names:
        return e
    text = encode(e).payload.decode()
    for old, new in names.items():
        text = text.replace(old, new)
    return decode(e.kind(), type(e).SCHEMA, text.encode())


def forge(src: Path, dst: Path, change: Change) -> Store:
    """``src``'s main branch recorded again into ``dst`` with the first event ``change`` alters
    (``change(event, state before it, the new store's blobs)`` returns the forged event, or None), every version id
    and blob id it renames replaced in every later event."""
    with Store.open(src, read_only=True) as s:
        events = [decode_envelope(e) for e in s.log.read("main")]
    c = Store.create(dst)
    shutil.copytree(src / "blobs", dst / "blobs", dirs_exist_ok=True)
    c.log.init_branch("main")
    h = History.open(c.log, "main", blobs=c.blobs)
    names: dict[str, str] = {}
    done = False
    for e in events:
        e = _renamed(e, names)
        if not done and (new := change(e, h.state, c.blobs)) is not None:
            done = True
            for field in ("version_id", "blob"):
                old, now = getattr(e, field, None), getattr(new, field, None)
                if old is not None and old != now:
                    names[old] = now
                    names[old[:12]] = now[:12]  # step tags name versions by their first 12 digits
            e = new
        h.record(e)
    assert done, "the change matched no event"
    assert verify_store(c.log, c.blobs).ok  # every hash holds
    return c


def test_a_patch_that_differs_from_its_verdict_is_caught(patched: Path, tmp_path: Path) -> None:
    with Store.open(patched, read_only=True) as s:
        env = s.log.read("main", kinds=["scaffold_patched"])[-1]  # the last patch: no later scaffold is built on it
        last, seq = env.id, env.seq

    def other_patch(e: Event, state: AgentState, blobs: BlobStore) -> Event | None:
        if not isinstance(e, ScaffoldPatched) or encode(e).payload != encode(seen[last]).payload:
            return None
        parent = state.versions[e.parent_version]
        ops = (PatchOp("replace", "/system_prompt", "Answer with the number only. Forged."),)
        new = apply_patch(parent.scaffold, ops)
        assert state.run is not None
        return msgspec.structs.replace(e, ops=ops, scaffold_hash=scaffold_hash(new), version_id=version_id(state.run.base_model, new, parent.adapter))

    with Store.open(patched, read_only=True) as s:
        seen = {last: decode_envelope(s.log.get(last))}
    with forge(patched, tmp_path / "f", other_patch) as s:
        with pytest.raises(ReplayDivergence) as exc:
            replay_recorded(s, "main", TASK)
    assert exc.value.field.startswith("ops[0]") and exc.value.seq == f"main#{seq}"  # at the patch, before anything built on it


def _first_adapter(fn: Callable[[AdapterCheckpointed], AdapterCheckpointed]) -> Change:
    return lambda e, state, blobs: fn(e) if isinstance(e, AdapterCheckpointed) else None


@pytest.mark.parametrize(("what", "change", "field"), [
    ("a trajectory dropped from its training data", lambda e: msgspec.structs.replace(e, training_data=e.training_data[:-1]), "training_data"),
    ("its seed", lambda e: msgspec.structs.replace(e, seed=e.seed + 1), "seed"),
    ("its learning rate", lambda e: msgspec.structs.replace(e, hyper={**e.hyper, "lr": 0.5}), "hyper.lr"),
    ("its recipe", lambda e: msgspec.structs.replace(e, recipe="grpo" if e.recipe != "grpo" else "rft"), "recipe"),
])
def test_an_adapter_whose_plan_was_changed_is_caught(trained: Path, tmp_path: Path, what: str, change: Callable[[AdapterCheckpointed], AdapterCheckpointed],
                                                     field: str) -> None:
    with forge(trained, tmp_path / "f", _first_adapter(change)) as s:
        with pytest.raises(ReplayDivergence) as exc:
            replay_recorded(s, "main", TASK)
    assert exc.value.field.split("[")[0] == field, what


def test_an_adapter_blob_replaced_by_another_valid_adapter_is_caught_only_by_retraining(trained: Path, tmp_path: Path) -> None:
    target = {}

    def other_blob(e: Event, state: AgentState, blobs: BlobStore) -> Event | None:
        if not isinstance(e, AdapterCheckpointed):
            return None
        with Store.open(trained, read_only=True) as s:
            tensors, meta = s.blobs.get_tensors(e.blob)
        name = sorted(tensors)[3]
        tensors[name] = tensors[name] * 1.01  # another valid adapter: same shapes, other weights
        target["tensor"] = name
        blob = blobs.put_safetensors(safetensors.numpy.save(tensors), metadata=meta)
        assert state.run is not None and state.head_version is not None
        return msgspec.structs.replace(e, blob=blob, version_id=version_id(state.run.base_model, state.head_version.scaffold, blob))

    with forge(trained, tmp_path / "f", other_blob) as s:
        report = replay_recorded(s, "main", TASK)  # consistent: outputs, plans and decisions all follow
        assert report.adapters == 2 and report.rederived == 0
        with pytest.raises(AdapterDiffers) as exc:
            replay_recorded(s, "main", TASK, retrain=tiny_model())
    assert exc.value.tensor == target["tensor"] and exc.value.field == "blob"
    r = CliRunner().invoke(main, ["replay", "main", "--retrain", "--store", str(tmp_path / "f"), "--json"])
    assert r.exit_code == 1 and json.loads(r.output)["tensor"] == target["tensor"]


def test_retraining_re_derives_every_adapter_bit_for_bit(trained: Path) -> None:
    r = CliRunner().invoke(main, ["replay", "main", "--retrain", "--store", str(trained), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["rederived"] == out["adapters"] == 2 and len(out["adapter_seconds"]) == 2 and out["software_differs"] == []
    r = CliRunner().invoke(main, ["replay", "main", "--retrain", "--store", str(trained)])
    assert "adapters re-derived: 2 of 2" in r.output


def test_retraining_says_first_which_software_differs(trained: Path, tmp_path: Path) -> None:
    def older_torch(e: Event, state: AgentState, blobs: BlobStore) -> Event | None:
        if not isinstance(e, RunStarted) or e.environment is None:
            return None
        return msgspec.structs.replace(e, environment=msgspec.structs.replace(e.environment, packages={**e.environment.packages, "torch": "1.0.0"}))

    with forge(trained, tmp_path / "f", older_torch) as s:
        notes = software_differences(s, "main", tiny_model())
    assert any(n.startswith("torch 1.0.0 recorded") for n in notes)
    r = CliRunner().invoke(main, ["replay", "main", "--retrain", "--store", str(tmp_path / "f")])
    assert r.exit_code == 0 and "software differs" in r.output.split("REPLAYS")[0] and "torch 1.0.0 recorded" in r.output


class FileTask:
    """arith's episodes, read from a file (a task that pins data)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name, self.description, self.format_hint, self.answer_prefix = "file-arith", "arith from a file", TASK.format_hint, ""
        self._eps = [Episode(**e) for e in json.loads(path.read_text())]

    def data_files(self) -> dict[str, Path]:
        return {self.path.name: self.path}

    def episodes(self, split):  # type: ignore[no-untyped-def]
        return [e for e in self._eps if e.split == split]

    def messages(self, scaffold, episode):  # type: ignore[no-untyped-def]
        return TASK.messages(scaffold, episode)

    def score(self, episode: Episode, output: str) -> Score:
        return TASK.score(episode, output)

    def parse_answer(self, output: str):  # type: ignore[no-untyped-def]
        return TASK.parse_answer(output)

    def reference_baselines(self, split):  # type: ignore[no-untyped-def]
        return {}

    def scaffold(self):  # type: ignore[no-untyped-def]
        return TASK.scaffold()


def test_a_resume_on_changed_data_is_refused_naming_the_file(tmp_path: Path) -> None:
    data = tmp_path / "items.json"
    eps = [msgspec.to_builtins(e) for s in ("train", "val", "test") for e in TASK.episodes(s)]
    data.write_text(json.dumps(eps))
    cfg = LoopConfig(task="file-arith", iterations=1, train_episodes=4, val_episodes=4, samples=2, levers=("scaffold",))
    with Store.create(tmp_path / "s") as s:
        Loop(s, task=FileTask(data), model=scripted(format_then_content_errors), feedback=RulePolicy(), config=cfg).run()
        [run] = [decode_envelope(e) for e in s.log.read("main", kinds=["run_started"])]
        assert isinstance(run, RunStarted) and run.data is not None and [f.name for f in run.data.files] == ["items.json"]
        assert run.environment is not None and run.environment.packages["msgspec"] == msgspec.__version__
        assert replay_recorded(s, "main", FileTask(data)).data == "as recorded"
    eps[0]["gold"] = str(int(eps[0]["gold"]) + 1)  # one gold answer changed: same size, other bytes
    data.write_text(json.dumps(eps))
    with Store.open(tmp_path / "s") as s:
        n = s.log.count()
        more = msgspec.structs.replace(cfg, iterations=2)
        with pytest.raises(DataChanged) as exc:
            Loop(s, task=FileTask(data), model=scripted(format_then_content_errors), feedback=RulePolicy(), config=more).run()
        assert exc.value.what == "data file items.json" and s.log.count() == n  # nothing recorded
        with pytest.raises(ReplayDivergence) as rexc:
            replay_recorded(s, "main", FileTask(data))
        assert rexc.value.field == "data file items.json" and rexc.value.seq == "main#0"


def test_retraining_with_another_base_model_is_refused_up_front(trained: Path) -> None:
    from replay.errors import RebuildMismatch

    with Store.open(trained, read_only=True) as s, pytest.raises(RebuildMismatch, match="to train adapters again"):
        replay_recorded(s, "main", TASK, retrain=tiny_model(seed=1))  # other weights: every adapter would differ


def test_a_long_divergence_is_said_in_a_line_and_kept_whole(patched: Path, tmp_path: Path) -> None:
    from sia_engine.domain.events import TrajectoryRecorded

    flood = "9" * 100_000

    episodes = {ep.id: ep for split in ("train", "val", "test") for ep in TASK.episodes(split)}

    def long_output(e: Event, state: AgentState, blobs: BlobStore) -> Event | None:  # scored as the scorer scores it
        if not isinstance(e, TrajectoryRecorded):
            return None
        scored = TASK.score(episodes[e.episode_id], flood)
        return msgspec.structs.replace(e, output=flood, score=scored.score, failure=scored.failure, metrics=dict(scored.metrics))

    with forge(patched, tmp_path / "f", long_output) as s, pytest.raises(ReplayDivergence) as exc:
        replay_recorded(s, "main", TASK)
    assert exc.value.field == "output" and exc.value.got == flood  # the error keeps it whole
    assert len(str(exc.value)) < 2_000 and "100,002 characters" in str(exc.value)  # its message says it in a line


def test_new_settings_recorded_mid_branch_and_forged_metrics_are_caught(patched: Path, tmp_path: Path) -> None:
    from sia_engine.domain.events import IterationStarted, RunConfigured, TrajectoryRecorded

    def looser_gate(e: Event, state: AgentState, blobs: BlobStore) -> Event | None:  # the loop records new settings only first on a fork
        if not isinstance(e, IterationStarted) or e.iteration != 1:
            return None
        assert state.run is not None
        forged = RunConfigured(config={**state.run.config, "margin": 5.0}, levers=tuple(state.run.levers), reason="forged")  # type: ignore[arg-type]
        return forged

    with Store.open(patched, read_only=True) as s:
        events = [decode_envelope(e) for e in s.log.read("main")]
    at = next(i for i, e in enumerate(events) if isinstance(e, IterationStarted) and e.iteration == 1)
    c = Store.create(tmp_path / "g")
    c.log.init_branch("main")
    h = History.open(c.log, "main", blobs=c.blobs)
    for i, e in enumerate(events):
        if i == at:
            h.record(looser_gate(e, h.state, c.blobs))  # type: ignore[arg-type]
        h.record(e)
    with pytest.raises(ReplayDivergence) as exc:
        replay_recorded(c, "main", TASK)
    c.close()
    assert exc.value.field == "event" and exc.value.got == "run_configured"

    def more_metrics(e: Event, state: AgentState, blobs: BlobStore) -> Event | None:
        return msgspec.structs.replace(e, metrics={**e.metrics, "exact": 42.0}) if isinstance(e, TrajectoryRecorded) else None

    with forge(patched, tmp_path / "m", more_metrics) as s, pytest.raises(ReplayDivergence) as exc:
        replay_recorded(s, "main", TASK)
    assert exc.value.field == "metrics.exact" and exc.value.got == 42.0


def test_a_recorded_config_the_loop_cannot_take_is_a_divergence_not_a_crash(patched: Path, tmp_path: Path) -> None:
    def bad_lora(e: Event, state: AgentState, blobs: BlobStore) -> Event | None:
        return msgspec.structs.replace(e, config={**e.config, "lora": "x"}) if isinstance(e, RunStarted) else None

    with forge(patched, tmp_path / "f", bad_lora) as s, pytest.raises(ReplayDivergence) as exc:
        replay_recorded(s, "main", TASK)
    assert exc.value.seq == "main#0"


def test_without_the_task_an_evaluation_it_cannot_recompute_is_said_not_counted(patched: Path, tmp_path: Path) -> None:
    from sia_engine.domain.events import ActionTaken, TrajectoryRecorded, VersionEvaluated

    with Store.open(patched, read_only=True) as s:
        events = [decode_envelope(e) for e in s.log.read("main")]
    first = next(e for e in events if isinstance(e, VersionEvaluated)).version_id
    tag = f"eval-{first[:12]}-"
    kept = [e for e in events if not ((isinstance(e, ActionTaken) and e.action_id.startswith(tag))
                                      or (isinstance(e, TrajectoryRecorded) and e.trajectory_id.startswith(tag)))]
    assert len(kept) < len(events)
    c = Store.create(tmp_path / "g")
    c.log.init_branch("main")
    h = History.open(c.log, "main", blobs=c.blobs)
    for e in kept:
        h.record(e)
    report = replay_recorded(c.log, "main", None)  # a log alone: what needs neither the task nor the blobs
    c.close()
    assert any(x.startswith("1 evaluations could not be recomputed") for x in report.skipped), report.skipped
