"""The package's layout: stage subpackages, imports that point one way, small modules,
no private name imported across modules, one home per public name."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from gi_utils.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "gi_utils"
STAGES = ("models", "data", "synthetic", "evaluation", "inference", "training", "report", "pipeline")
#: A stage may import the basics and the stages listed before it here, never one after.
ORDER = ("models", "data", "synthetic", "inference", "evaluation", "training", "report", "pipeline")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str], bool]]:
    """(imported module, names, at module level) of every import of the package's own modules."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gi_utils"):
            target = node.module
            if target not in modules:
                continue
            found.append((target, [a.name for a in node.names], id(node) in top))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("gi_utils") and a.name in modules:
                    found.append((a.name, [], id(node) in top))
    return found


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_stage_subpackages_exist_and_say_what_they_do():
    for stage in STAGES:
        init = PACKAGE / stage / "__init__.py"
        assert init.is_file(), stage
        assert ast.get_docstring(ast.parse(init.read_text())), f"{stage}/__init__.py has no docstring"


def test_no_import_cycle_and_no_long_module():
    modules = _modules()
    graph = {m: {t for t, _, _ in _imports(m, p, modules) if t != m and not t.endswith("__init__")}
             for m, p in modules.items()}  # fmt: skip
    for m, p in modules.items():
        assert len(p.read_text().splitlines()) <= MAX_LINES, f"{m} has more than {MAX_LINES} lines"
    # a package's __init__ imports its own modules: drop those edges (they re-export)
    for m in graph:
        graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_stages_import_only_stages_below_them():
    modules = _modules()
    for m, p in modules.items():
        own = _stage(m)
        for target, _, _ in _imports(m, p, modules):
            other = _stage(target)
            if own is None:
                assert other is None, f"basic module {m} imports the stage module {target}"
            elif other is not None and other != own:
                assert ORDER.index(other) < ORDER.index(own), f"{m} ({own}) imports {target} ({other})"


def test_no_private_name_crosses_modules_and_no_function_level_import():
    modules = _modules()
    for m, p in modules.items():
        for target, names, at_top in _imports(m, p, modules):
            assert at_top, f"{m} imports {target} inside a function"
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{m} imports private {private} from {target}"


def test_each_public_name_is_exported_by_one_package_only():
    homes: dict[str, str] = {}
    for stage in STAGES:
        pkg = importlib.import_module(f"gi_utils.{stage}")
        for name in pkg.__all__:
            assert name not in homes, f"{name} exported by gi_utils.{stage} and gi_utils.{homes[name]}"
            homes[name] = stage
            assert hasattr(pkg, name), f"gi_utils.{stage}.__all__ names a missing {name}"
