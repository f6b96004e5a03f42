"""No import cycle in matlab/, counting the imports inside functions that hide one at run time."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "matlab"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str], name: str | None = None) -> set[str]:
    """The matlab modules `path` (module `name`) imports anywhere in its body, top level or
    inside functions."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from matlab.cli import bench` imports the module matlab.cli.bench
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(target for target in targets if target in modules)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    graph = {module_name(path): imported_modules(path, modules) for path in paths}
    # Importing a module runs its package's __init__ first: an edge to each parent package.
    for name, edges in graph.items():
        edges.update(parent for parent in (".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1))
                     if parent in graph and parent != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def _is_package_edge(source: str, target: str) -> bool:
    """A package importing its own submodules (matlab.cli -> matlab.cli.bench) with the submodule
    importing a sibling through the package is Python's normal package layout, not a cycle
    between concepts; what counts is a cycle between modules."""
    return source.startswith(target + ".") or target.startswith(source + ".")


def test_the_walk_finds_a_cycle_hidden_inside_a_function(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from matlab.plan import SlicePlan\n")
    assert imported_modules(source, {"matlab.plan"}, name="matlab.m") == {"matlab.plan"}


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    modules_only = {name: {target for target in edges if not _is_package_edge(name, target)}
                    for name, edges in graph.items()}
    cycle = find_cycle(modules_only)
    assert cycle is None, " -> ".join(cycle)


def package_of(module: str) -> str:
    """The package a module belongs to for the layering: `matlab.core.loading` -> `matlab.core`;
    a top-level module (`matlab.errors`) is its own."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges between matlab's packages (and top-level modules): one where any module of the first
    imports any of the second. The root package `matlab` (its version) is left out: it imports nothing."""
    packages: dict[str, set[str]] = {}
    for name, edges in graph.items():
        source = package_of(name)
        packages.setdefault(source, set())
        packages[source].update(package_of(target) for target in edges
                                if package_of(target) not in (source, "matlab") and source != "matlab")
    return packages


def test_package_graph_finds_a_cycle_between_packages():
    graph = {"matlab.a.x": {"matlab.b.y"}, "matlab.b.y": set(), "matlab.b.z": {"matlab.a.w"}, "matlab.a.w": set()}
    assert find_cycle(package_graph(graph)) in (["matlab.a", "matlab.b", "matlab.a"], ["matlab.b", "matlab.a", "matlab.b"])


def test_no_import_cycle_between_packages():
    """The packages are layers: util, io, families, formats, arch, slice_config, plan, runtimes,
    slicing, core, harness, search, report, training, ... each imports only from those below it
    (docs/architecture.md)."""
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, " -> ".join(cycle)
