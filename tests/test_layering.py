"""ARCHITECTURE.md's layers, enforced: imports point down only, no cycles, light package roots."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["store", "sia_engine", "tasks", "replay"]

# package -> project packages it may import
ALLOWED = {
    "store": set(),
    "sia_engine": {"store"},
    "tasks": {"sia_engine", "store"},
    "replay": {"sia_engine", "store"},
}
CLI: tuple[str, ...] = ()  # no exception: the `sia` command finds tasks and replay's commands through entry points

# sia_engine's own packages, top to bottom: each may import those below it (and the package root
# and its errors, which every layer shares)
ENGINE_LAYERS = ["cli", "experiment", "loop", "models", "sandbox", "domain"]
ENGINE_SHARED = {"sia_engine", "sia_engine.errors"}


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def project_imports(path: Path) -> set[str]:
    """Dotted project modules imported by ``path`` (function-level imports included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        out |= {n for n in names if n.split(".")[0] in PACKAGES}
    return out


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    if rel in CLI:
        return
    pkg = rel.split("/")[0]
    bad = {m for m in project_imports(path) if m.split(".")[0] not in ALLOWED[pkg] | {pkg}}
    assert not bad, f"{rel} imports {sorted(bad)}; {pkg} may import only {sorted(ALLOWED[pkg])}"


def engine_layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "sia_engine" and parts[1] in ENGINE_LAYERS else None


@pytest.mark.parametrize("path", [p for p in modules() if p.is_relative_to(ROOT / "sia_engine")], ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_layers_point_down(path: Path) -> None:
    """Inside sia_engine: cli -> experiment -> loop -> models -> sandbox -> domain, never up."""
    rel = path.relative_to(ROOT).with_suffix("")
    me = engine_layer(".".join(rel.parts))
    for m in project_imports(path):
        if m.split(".")[0] != "sia_engine" or m in ENGINE_SHARED:
            continue
        them = engine_layer(m)
        assert them is not None, f"{rel} imports {m}, which belongs to no layer of {ENGINE_LAYERS}"
        if me is None:  # the package root and errors import no layer
            raise AssertionError(f"{rel} is shared by every layer and may not import {m}")
        assert ENGINE_LAYERS.index(them) >= ENGINE_LAYERS.index(me), f"{rel} ({me}) imports {m} ({them}), a layer above it"


def package_of(module: str) -> str:
    """The package a dotted module belongs to (a package belongs to itself)."""
    parts = module.removesuffix(".__init__").split(".")
    return module.removesuffix(".__init__") if (ROOT.joinpath(*parts) / "__init__.py").exists() else ".".join(parts[:-1])


def private_imports(path: Path) -> set[str]:
    """``from X import _name`` where X is another package of the project (or another of the
    engine's packages): a private name crossing a package."""
    mine = package_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
    bad: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] in PACKAGES:
            if package_of(node.module) != mine:
                bad |= {f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")}
    return bad


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_crosses_a_package(path: Path) -> None:
    bad = private_imports(path)
    assert not bad, f"{path.relative_to(ROOT)} imports private names of another package: {sorted(bad)}; make them public"


def test_no_import_cycles_between_files() -> None:
    def modname(p: Path) -> str:
        rel = p.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    names = {modname(p): p for p in modules()}
    graph = {
        m: {i for i in project_imports(p) if i in names and i != m and not m.startswith(i + ".") and names[i].name != "__init__.py"}
        for m, p in names.items()
    }
    seen: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        seen[m] = 1
        for n in graph[m]:
            if seen.get(n) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*stack, m, n])}")
            if n not in seen:
                visit(n, [*stack, m])
        seen[m] = 2

    for m in graph:
        if m not in seen:
            visit(m, [])


@pytest.mark.parametrize("mod", ["sia_engine", "sia_engine.domain.events", "sia_engine.domain.state", "sia_engine.domain.integrity", "store", "replay"])
def test_domain_imports_do_not_pull_torch(mod: str) -> None:
    code = f"import sys, {mod}; bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("mod", ["sia_engine.domain.events", "sia_engine.domain.state", "sia_engine.domain.scaffold", "store"])
def test_the_domain_loads_no_database(mod: str) -> None:
    """Events and the reducer import no DuckDB, pyarrow, safetensors or numpy (replay and audit
    tools, or a regulated pipeline, can read events without the storage backends)."""
    code = f"import sys, {mod}; print([m for m in ('duckdb', 'pyarrow', 'safetensors', 'numpy') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60  # from `def` to the last line, docstring included (a command's option decorators not)


def test_modules_stay_small() -> None:
    big = [f"{p.relative_to(ROOT)} ({n})" for p in modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not big, f"one concept per module: split {big}"


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``name:line (n lines)`` for each function (or method) of ``source`` longer than ``limit``."""
    return [f"{node.name}:{node.lineno} ({n} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and (n := (node.end_lineno or node.lineno) - node.lineno + 1) > limit]


def test_functions_stay_short() -> None:
    long = [f"{p.relative_to(ROOT)} {f}" for p in modules() for f in long_functions(p.read_text())]
    assert not long, f"split these functions (at most {MAX_FUNCTION_LINES} lines each): {long}"


def test_the_length_check_sees_a_long_function() -> None:
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    source = f"@decorated\ndef short():\n    return 1\n\n\nclass C:\n    def long(self):\n{body}\n"
    assert long_functions(source) == [f"long:7 ({MAX_FUNCTION_LINES + 1} lines)"]


@pytest.mark.parametrize("pkg", ["store", "sia_engine", "replay"])
def test_public_names_exist(pkg: str) -> None:
    mod = __import__(pkg)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{pkg}.__all__ names {name}, which it does not define"
