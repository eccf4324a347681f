"""The import graph of raysearch and benchd: no cycle between modules, and raysearch's packages
import only the ones the README's Layout section lists above them (the order a newcomer reads)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import REPO


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for pkg in ("raysearch", "benchd"):
        for path in (root / pkg).rglob("*.py"):
            if "v1" in path.relative_to(root).parts:  # generated stubs
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, known: set[str]) -> Iterator[str]:
    """The project modules ``path`` imports, at module level or inside functions (both are
    dependencies), leaving out typing-only imports (``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        yield from (n for n in names if n in known)


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    mods = _modules(root)
    return {m: set(_imports(p, set(mods))) - {m} for m, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        path.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return path[path.index(v):] + [v]
            if v not in state and (cycle := visit(v)):
                return cycle
        state[u] = 2
        path.pop()
        return None

    for u in sorted(graph):
        if u not in state and (cycle := visit(u)):
            return cycle
    return None


def readme_layers() -> list[str]:
    """raysearch's packages in the order of the README's Layout section."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("raysearch/      packages by job"):text.index("\ntests/")]
    names = re.findall(r"^ {16}(\S+?)/?(?:\.py)? {2,}", block, flags=re.M)
    return ["raysearch." + n.replace("/", ".") for n in names]


def _layer(module: str, layers: list[str]) -> str | None:
    """The most specific layer holding ``module`` (a package listed inside another before it)."""
    holding = [layer for layer in layers if module == layer or module.startswith(layer + ".")]
    return max(holding, key=len) if holding else None


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 60 and "raysearch.search.trial" in graph["raysearch.search.driver"]  # what it scans
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None


def test_packages_import_only_what_the_readme_lists_above_them():
    layers = readme_layers()
    assert layers[:2] == ["raysearch.models", "raysearch.storage"] and layers[-1] == "raysearch.cli"
    upward = []
    for module, targets in import_graph().items():
        if not module.startswith("raysearch.") or (mine := _layer(module, layers)) is None:
            continue  # benchd (its own test keeps it free of raysearch), raysearch/__init__, the stage scripts
        for target in targets:
            theirs = _layer(target, layers)
            if theirs is not None and layers.index(theirs) > layers.index(mine):
                upward.append(f"{module} imports {target} ({theirs} is listed below {mine})")
    assert not upward, "\n".join(sorted(upward))
    assert not any(t.startswith("raysearch") for m, ts in import_graph().items() if m.startswith("benchd") for t in ts)
