"""README and docs meta-tests: the README opens with the two commands, CI runs the second, its tour
runs as typed, the Python snippets of docs/ run, and every relative link lands on a page and heading."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *DOCS]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


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


def test_readme_stays_a_front_door() -> None:
    """The long material lives in docs/; the README links every page of it."""
    assert len(README.splitlines()) <= 150
    for page in DOCS:
        assert f"](docs/{page.name})" in README, f"the README does not link docs/{page.name}"


@pytest.mark.parametrize("page", [p for p in DOCS if blocks(p.read_text(), "python")], ids=lambda p: p.name)
def test_docs_python_snippets_run(page: Path) -> None:
    for i, snippet in enumerate(blocks(page.read_text(), "python")):
        exec(compile(snippet, f"docs/{page.name} (snippet {i + 1})", "exec"), {})


def test_readme_tour_runs_as_typed(tmp_path: Path) -> None:
    """The five-minute tour, every command as the README types it (`sia` as installed beside this
    Python), then its Python snippet on the agent the tour rebuilt (~1 minute on 2 cores)."""
    [_, tour] = blocks(README, "bash")
    [load] = blocks(README, "python")
    env = {k: v for k, v in os.environ.items() if k != "SIA_STORE"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", tour], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"the tour failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert "all as recorded" in r.stdout and (tmp_path / "audit.html").is_file()
    assert {p.name for p in (tmp_path / "agent").iterdir()} == {"scaffold.json", "agent.json", "adapter"}
    r = subprocess.run([sys.executable, "-c", load], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_land(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name} links {target}: no such file"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page.name} links {target}: no such heading in {dest.name}"
