"""`sia fork`, a fork continued with other settings, `sia rollback`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sia_engine.cli.main import main
from sia_engine.domain.events import RunConfigured, decode_envelope
from sia_engine.domain.history import rebuild
from sia_engine.domain.integrity import verify_store
from sia_engine.errors import RunMismatch
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig
from store import Store
from tests.loop_helpers import TASK, scripted, sometimes_wrong


def cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.output


def run(store: Store, branch: str = "main", iterations: int = 2, **cfg):  # type: ignore[no-untyped-def]
    config = LoopConfig(task="arith", iterations=iterations, train_episodes=6, val_episodes=6, samples=2, **cfg)
    return Loop(store, task=TASK, model=scripted(sometimes_wrong), feedback=RulePolicy(), config=config, branch=branch).run()


def test_fork_then_continue_with_other_settings(tmp_path: Path) -> None:
    with Store.create(tmp_path) as s:
        run(s, iterations=2)
        ends = [e.seq for e in s.log.read("main") if e.kind in ("version_accepted", "version_rejected")]
        with pytest.raises(RunMismatch, match="sia fork BRANCH@SEQ NEW"):
            run(s, iterations=3, levers=("scaffold",))
    code, output = cli("fork", f"main@{ends[0]}", "scaffold-only", "--reason", "what if", "--store", str(tmp_path), "--json")
    assert code == 0, output
    assert json.loads(output)["source"] == "main"
    with Store.open(tmp_path) as s:
        state = run(s, branch="scaffold-only", iterations=3, levers=("scaffold",))
        own = [decode_envelope(e) for e in s.log.read("scaffold-only") if e.branch == "scaffold-only"]
        assert [type(e).__name__ for e in own[:2]] == ["BranchForked", "RunConfigured"]
        configured = own[1]
        assert isinstance(configured, RunConfigured) and configured.levers == ("scaffold",)
        assert state.run is not None and state.run.levers == ("scaffold",) and state.run.config["levers"] == ["scaffold"]
        at_fork, _ = rebuild(s.log, "main", until_seq=ends[0])
        on_fork = state.ordered_versions()[len(at_fork.versions):]
        assert on_fork and {v.lever for v in on_fork} == {"scaffold"}  # the fork pulled the scaffold lever only
        main_state, _ = rebuild(s.log, "main")
        assert main_state.run is not None and main_state.run.levers == ("scaffold", "weights")  # main untouched
        assert verify_store(s.log, s.blobs).ok
        # its settings are now the fork's own: resuming it with the old ones is a mismatch
        with pytest.raises(RunMismatch):
            run(s, branch="scaffold-only", iterations=4)


def test_fork_refuses_bad_references(tmp_path: Path) -> None:
    with Store.create(tmp_path) as s:
        run(s, iterations=1)
    code, output = cli("fork", "main", "x", "--store", str(tmp_path))
    assert code == 2 and "'main' is not BRANCH@SEQ" in output
    code, output = cli("fork", "main@99999", "x", "--store", str(tmp_path))
    assert code == 2 and "99999" in output


def test_rollback_to_an_earlier_accepted_version(tmp_path: Path) -> None:
    from tests.loop_helpers import answers_in_sentences_until_told

    with Store.create(tmp_path) as s:
        config = LoopConfig(task="arith", iterations=1, levers=("scaffold",), samples=1)
        state = Loop(s, task=TASK, model=scripted(answers_in_sentences_until_told), feedback=RulePolicy(), config=config).run()
    first, head = state.head_history[0], state.head
    assert first != head
    code, output = cli("rollback", "main", head[:10], "--reason", "x", "--store", str(tmp_path))
    assert code == 2 and "is the head" in output
    code, output = cli("rollback", "main", first[:10], "--reason", "the patch overfits", "--store", str(tmp_path), "--json")
    assert code == 0, output
    with Store.open(tmp_path) as s:
        after, _ = rebuild(s.log, "main")
        assert after.head == first and after.head_history[-1] == first
        last = decode_envelope(s.log.read("main")[-1])
        assert last.kind() == "rolled_back" and last.reason == "the patch overfits"  # type: ignore[attr-defined]
        assert verify_store(s.log, s.blobs).ok
    out = json.loads(output)
    assert out["head"] == first and out["previous"] == head


def test_library_rollback_refuses_with_a_typed_error_and_writes_nothing(tmp_path: Path) -> None:
    from replay.branching import RollbackRefused, fork_branch, rollback
    from tests.loop_helpers import answers_in_sentences_until_told

    with Store.create(tmp_path) as s:
        config = LoopConfig(task="arith", iterations=1, levers=("scaffold",), samples=1)
        state = Loop(s, task=TASK, model=scripted(answers_in_sentences_until_told), feedback=RulePolicy(), config=config).run()
        first, head = state.head_history[0], state.head
        assert head is not None
        n = s.log.count()
        for version, reason, why in [(head, "x", "is the head"), (first, " ", "needs a reason"),
                                     (s.log.at("main", 0).id, "x", "names an event")]:
            with pytest.raises(RollbackRefused, match=why):
                rollback(s, "main", version, reason=reason)
        assert s.log.count() == n
        alt = fork_branch(s, "alt", source="main", at_seq=s.log.branch("main").head_seq)
        assert alt.state.head == head and alt.state.forks[-1].startswith("main#")
        assert rollback(s, "alt", first[:10], reason="back").state.head == first
        assert rebuild(s.log, "main")[0].head == head  # the source's head did not move
        assert verify_store(s.log, s.blobs).ok
