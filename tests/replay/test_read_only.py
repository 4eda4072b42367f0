"""Read-only commands never write: every file of the store stays byte-identical, with or without
a journal left pending by a writer that stopped without closing."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sia_engine.cli.main import main
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.models.presets import tiny_model
from sia_engine.models.protocol import LoraSettings
from store import Store
from tests.loop_helpers import TASK

ROOT = Path(__file__).resolve().parents[2]
PENDING = """
import os, sys
sys.path.insert(0, {root!r})
from store import Store
from sia_engine.domain.history import fork
s = Store.open(sys.argv[1])
fork(s.log, "pending", source="main", at_seq=3, reason="journalled, never flushed", blobs=s.blobs)
os._exit(0)  # no close: the event stays in the journal
"""


def files(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(root.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module", params=["closed", "journal pending"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ro") / "store"
    with Store.create(path) as s:
        cfg = LoopConfig(task="arith", iterations=2, train_episodes=4, val_episodes=2, samples=2, lora=LoraSettings(steps=2))
        Loop(s, task=TASK, model=tiny_model(), feedback=RulePolicy(), config=cfg).run()
    if request.param == "journal pending":
        subprocess.run([sys.executable, "-c", PENDING.format(root=str(ROOT)), str(path)], check=True)
        assert (path / "log.duckdb.journal").stat().st_size > 0
    return path


def commands(store: Path, out: Path) -> list[list[str]]:
    with Store.open(store, read_only=True) as s:
        from sia_engine.domain.history import rebuild

        state, _ = rebuild(s.log, "main")
    v = [x.version_id[:10] for x in state.ordered_versions()]
    return [
        ["verify"], ["log", "--limit", "0"], ["show", "main#2"], ["show", v[0]], ["branches"],
        ["sql", "SELECT count(*) FROM events"], ["audit", "--out", str(out / "audit.html")], ["diff", v[0], v[-1]],
        ["compare", "main"], ["export", "--parquet", str(out / "parquet")], ["rebuild", v[-1], "--out", str(out / "agent")],
    ]


def test_read_only_commands_leave_every_store_file_byte_identical(store: Path, tmp_path: Path) -> None:
    for args in commands(store, tmp_path):
        before = files(store)
        r = CliRunner().invoke(main, [*args, "--store", str(store)])
        assert r.exit_code == 0, (args, r.output)
        assert files(store) == before, args


def test_verify_reports_a_pending_journal(store: Path) -> None:
    r = CliRunner().invoke(main, ["verify", "--store", str(store)])
    assert r.exit_code == 0
    pending = (store / "log.duckdb.journal").is_file() and (store / "log.duckdb.journal").stat().st_size > 0
    assert ("events are in the journal, not yet in log.duckdb" in r.output) == pending
