"""The package is a house of layers: no module imports one that imports it back, however indirectly."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"builder": ROOT / "builder", "xenspin_installer": ROOT / "components/installer/xenspin_installer"}


def imports(package: str, top: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (relative or absolute, at the top or in a function)."""
    names = {p.relative_to(top).with_suffix("").as_posix().replace("/", ".") for p in top.rglob("*.py")}
    names = {n.removesuffix(".__init__") if n != "__init__" else "" for n in names}
    graph: dict[str, set[str]] = {}
    for p in top.rglob("*.py"):
        mod = p.relative_to(top).with_suffix("").as_posix().replace("/", ".").removesuffix("__init__").rstrip(".")
        pkg = mod if p.name == "__init__.py" else mod.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".") if pkg else []
                    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    target = ".".join([*base, *(node.module.split(".") if node.module else [])])
                elif node.module and (node.module == package or node.module.startswith(package + ".")):
                    target = node.module.removeprefix(package).lstrip(".")
                else:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}".lstrip(".")
                    deps.add(sub if sub in names else target)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(package + "."):
                        deps.add(alias.name.removeprefix(package + "."))
        graph[mod] = {d for d in deps if d in names and d != mod and d != ""}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            found = visit(nxt, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return None


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_module_imports_itself_back(package: str) -> None:
    found = cycle(imports(package, PACKAGES[package]))
    assert found is None, " -> ".join(found or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
