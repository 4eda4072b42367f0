"""The reserved scaffold fields (``Decoding.n_samples``, ``Scaffold.tools``): hashed into every
version id, read by no engine code. Both facts are what their docstrings say; these tests keep
the docstrings true (a reader found here means: document what it does, in ``scaffold.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

import msgspec
import pytest

from sia_engine.domain.events import ModelRef
from sia_engine.domain.scaffold import Decoding, Scaffold, scaffold_hash
from sia_engine.domain.state import version_id

ROOT = Path(__file__).resolve().parents[3]
ENGINE = ("sia_engine", "tasks", "replay")
BASE = ModelRef(id="test/base", revision="r1", weights_hash="0" * 64)
RESERVED = {"n_samples", "tools"}


@pytest.mark.parametrize("changed", [
    Scaffold(decoding=Decoding(n_samples=2)),
    Scaffold(tools={"calculator": {"description": "adds two numbers"}}),
])
def test_each_reserved_field_is_hashed_into_the_version_id(changed: Scaffold) -> None:
    assert scaffold_hash(changed) != scaffold_hash(Scaffold())
    assert version_id(BASE, changed, None) != version_id(BASE, Scaffold(), None)
    assert version_id(BASE, changed, "a" * 64) != version_id(BASE, Scaffold(), "a" * 64)


def test_the_default_scaffold_still_hashes_with_both_fields() -> None:
    """Dropping either field, or changing its default, changes this hash and so every version id."""
    assert msgspec.to_builtins(Scaffold())["tools"] == {} and msgspec.to_builtins(Scaffold())["decoding"]["n_samples"] == 1
    assert scaffold_hash(Scaffold()) == "0a3e6a05938a54a64f43615b2fa190794799327eaeec11dc662fde2b8ee3ef1e"


def _scaffold_like(node: ast.expr) -> bool:
    """A receiver that names a scaffold or a decoding (``scaffold``, ``head.scaffold``, ``s.decoding``)."""
    last = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
    return "scaffold" in last.lower() or "decoding" in last.lower()


def readers(source: str) -> list[str]:
    """Reads of a reserved field in ``source``: ``.n_samples`` on anything (only ``Decoding`` has
    one), ``.tools`` on a scaffold-named receiver (``Score.tools`` is another field), the names as
    a key, a ``getattr`` name or a JSON Patch path."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and (
                node.attr == "n_samples" or (node.attr == "tools" and _scaffold_like(node.value))):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                node.value in RESERVED or (node.value.startswith("/") and node.value.rstrip("/").split("/")[-1] in RESERVED)):
            found.append(f"{node.lineno}: {node.value!r}")
    return found


def test_the_scanner_finds_a_reader() -> None:
    planted = ('k = head.scaffold.tools\nn = version.scaffold.decoding.n_samples\nt = getattr(scaffold, "tools")\n'
               'p = PatchOp("add", "/decoding/n_samples", 3)\nok = scored.tools\n')
    assert sorted(int(r.split(":")[0]) for r in readers(planted)) == [1, 2, 3, 4]


def test_no_engine_code_reads_a_reserved_field() -> None:
    found = {}
    files = [path for package in ENGINE for path in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 50 and ROOT / "sia_engine" / "domain" / "scaffold.py" in files
    for path in files:
        hits = readers(path.read_text(encoding="utf-8"))  # the definitions are names, not reads
        if hits:
            found[str(path.relative_to(ROOT))] = hits
    assert found == {}, f"a reserved scaffold field is read: document what it does in sia_engine/domain/scaffold.py ({found})"
