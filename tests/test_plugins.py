"""Tasks and commands are plugins: a package that declares entry points adds them, with no change
to the engine. A tiny plugin distribution is laid on sys.path here, as pip would install it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

PLUGIN = '''
from sia_engine.models.protocol import Message
from sia_engine.domain.scaffold import Scaffold
from sia_engine.loop.task import Episode, Score, chat_messages
import click


class Echo:
    name = "echo"
    description = "repeat the word (a test plugin)"
    data_help = "built in"
    format_hint = "Answer with the word only."
    answer_prefix = ""

    def __init__(self, *, data=None):
        self.word = data or "hello"

    def episodes(self, split):
        return [Episode(id=f"{split}-{i}", split=split, input=f"Say {self.word}.", gold=self.word) for i in range(4)]

    def messages(self, scaffold, episode):
        return chat_messages(scaffold, episode.input)

    def score(self, episode, output):
        ok = output.strip() == episode.gold
        return Score(1.0 if ok else 0.0, "none" if ok else "content")

    def parse_answer(self, output):
        return output.strip() or None

    def reference_baselines(self, split):
        return {}

    def scaffold(self):
        return Scaffold(system_prompt="Repeat.")


@click.command()
def hello():
    """Say hello (a test plugin command).

    \\b
    Example:
      sia hello
    """
    click.echo("hello from a plugin")
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "sia_echo_plugin.py").write_text(PLUGIN)
    info = tmp_path / "sia_echo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sia-echo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[sia_engine.tasks]\necho = sia_echo_plugin:Echo\n\n[sia_engine.commands]\nhello = sia_echo_plugin:hello\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    monkeypatch.undo()  # the plugin uninstalled: `sia` has its own commands again
    sys.modules.pop("sia_echo_plugin", None)
    from sia_engine.cli.main import build_cli

    build_cli()


def test_a_plugin_task_runs_in_the_loop(plugin: Path, tmp_path: Path) -> None:
    from sia_engine.loop.feedback.rule import RulePolicy
    from sia_engine.loop.loop import Loop, LoopConfig
    from sia_engine.loop.registry import get_task, task_names
    from sia_engine.models.protocol import ScriptedModel
    from store import Store

    assert "echo" in task_names()
    task = get_task("echo", data="bonjour", protect=("ignored",))
    model = ScriptedModel(lambda r, a: "bonjour", name="parrot")
    with Store.create(tmp_path / "s") as s:
        state = Loop(s, task=task, model=model, feedback=RulePolicy(), config=LoopConfig(task="echo", iterations=1, samples=1)).run()
    assert state.head_version is not None and state.head_version.score("val") == 1.0


def test_plugin_tasks_and_commands_appear_in_the_cli(plugin: Path) -> None:
    from sia_engine.cli.main import build_cli

    cli = build_cli()
    r = CliRunner().invoke(cli, ["tasks", "--json"])
    assert r.exit_code == 0 and '"echo"' in r.output
    r = CliRunner().invoke(cli, ["hello"])
    assert r.exit_code == 0 and r.output.strip() == "hello from a plugin"
    assert sys.modules.get("sia_echo_plugin") is not None
