"""The package's layering: no import cycles between hpcgen modules, counting imports inside
functions (a function-local import that only hides a cycle is still one); imports under
``if TYPE_CHECKING:`` are for annotations and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "hpcgen"


def module_name(path: Path) -> str:
    parts = ("hpcgen",) + path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """hpcgen modules ``tree`` imports anywhere but under ``if TYPE_CHECKING:``."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in modules:
                out.add(node.module)
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules:
                    out.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in SRC.rglob("*.py")}
    names = set(paths)
    return {m: imports(ast.parse(p.read_text()), names) - {m} for m, p in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        found.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function():
    tree = ast.parse("import os\ndef f():\n    from hpcgen.b import x\n")
    other = ast.parse("from hpcgen.a import y\nif TYPE_CHECKING:\n    from hpcgen.c import z\n")
    names = {"hpcgen.a", "hpcgen.b", "hpcgen.c"}
    graph = {"hpcgen.a": imports(tree, names), "hpcgen.b": imports(other, names), "hpcgen.c": set()}
    assert graph["hpcgen.b"] == {"hpcgen.a"}  # the TYPE_CHECKING import does not count
    assert cycles(graph) == [["hpcgen.a", "hpcgen.b"]]


def test_no_import_cycles_in_the_package():
    assert cycles(import_graph()) == []
