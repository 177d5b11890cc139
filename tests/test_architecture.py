"""The package's layers, read from its own imports (top-level and inside functions): no circles, no arrow running
back up, and nothing imported from outside the package (docs/architecture.md draws the same layers)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "chemgen"

# Low to high; a module may import its own layer and the layers below it. A package named here holds the layer of
# all its modules; a module not named is a bug of this table (the test says which).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "paths", "atoms", "geometry", "datasets", "io", "bonds", "config", "dense", "samples", "lineage",
     "tracking", "gates", "configs", "testing"),
    ("data", "spectra", "nn", "diffusion", "scoring"),
    ("models",),
    ("training", "sampling", "elucidation", "registry", "screening"),
    ("flows",),
    ("cli", "web"),
)


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(path: Path, module: str, known: dict[str, Path]) -> set[str]:
    """Every chemgen module ``module`` imports, anywhere in the file (an import of a package counts as its
    ``__init__``; ``from package import submodule`` as the submodule)."""
    here = module.split(".") + (["__init__"] if path.name == "__init__.py" else [])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def _layer(module: str) -> int:
    room = module.split(".")[1] if "." in module else ""
    for level, rooms in enumerate(LAYERS):
        if room in rooms:
            return level
    raise AssertionError(f"{module}: its room {room!r} is in no layer of tests/test_architecture.py")


def _graph() -> dict[str, set[str]]:
    known = _modules()
    # a package's __init__ may re-export its own modules; those edges are not dependencies between rooms
    return {m: {t for t in _imports(p, m, known) if not (p.name == "__init__.py" and t.startswith(m + "."))}
            for m, p in known.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected sets of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_circles():
    assert _circles(_graph()) == []


def test_no_import_runs_back_up_a_layer():
    upward = sorted(f"{m} ({_layer(m)}) imports {t} ({_layer(t)})" for m, targets in _graph().items()
                    for t in targets if m != "chemgen" and t != "chemgen" and _layer(t) > _layer(m))
    assert upward == []


def test_the_package_imports_nothing_of_the_repository_outside_it():
    outside = {p.name for p in PACKAGE.parent.iterdir() if p.is_dir() and (p / "__init__.py").is_file()} - {"chemgen"}
    outside |= {"workflows", "tests", "bench", "tools"}
    found = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{module} imports {n}" for n in names if n.split(".")[0] in outside]
    assert found == []


def test_e3nn_is_imported_only_by_the_testing_helpers():
    """The models are plain torch, so training needs torch alone; e3nn checks them from `chemgen.testing`."""
    found = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [module for n in names if n.split(".")[0] == "e3nn"]
    assert sorted(set(found)) == ["chemgen.testing"]


def test_the_walk_sees_imports_inside_functions_and_finds_a_planted_circle(tmp_path):
    """The checks above must be able to fail: an import inside a function is an edge, and two modules importing
    each other are a circle."""
    known = {"chemgen.a": tmp_path / "a.py", "chemgen.b": tmp_path / "b.py"}
    known["chemgen.a"].write_text("def f():\n    from chemgen.b import g\n    return g\n")
    known["chemgen.b"].write_text("from chemgen import a\n\ndef g():\n    return a\n")
    graph = {m: _imports(p, m, known) for m, p in known.items()}
    assert graph == {"chemgen.a": {"chemgen.b"}, "chemgen.b": {"chemgen.a"}}
    assert _circles(graph) == [["chemgen.a", "chemgen.b"]]
