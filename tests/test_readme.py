"""README meta-tests: it opens with the two commands, CI runs the second, its Python snippet runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_opens_with_exactly_two_commands() -> None:
    first = README.split("```")[1]
    assert README.index("```") < README.index("\n", README.index("# sia-engine")) + 3
    lines = [x for x in first.splitlines()[1:] if x.strip()]
    assert len(lines) == 2
    install_run, install_test = lines
    assert install_run.startswith("python3 -m pip install torch==2.13.0 && ") and "sia run --task" in install_run
    assert install_test.startswith("python3 -m pip install torch==2.13.0 && ") and install_test.endswith("python3 -m pytest -q")


def test_ci_runs_the_readme_test_command() -> None:
    second = [x for x in README.split("```")[1].splitlines() if x.strip()][2]
    assert second in (ROOT / ".ci" / "run").read_text().splitlines()


def test_python_snippet_runs() -> None:
    [snippet] = blocks("python")
    exec(compile(snippet, "README.md", "exec"), {})
