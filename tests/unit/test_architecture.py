"""The shape of the code, checked: imports run only downward through the layers, with no cycle; the report
imports no training code; the run directory's file names are written in one place; tests share helpers through
tests/helpers.py only."""

from __future__ import annotations

import ast
from pathlib import Path

import tunelab
from tunelab.runs import layout

SRC = Path(tunelab.__file__).parent

# Bottom to top; a module may import from its own layer and the layers below. docs/architecture.md explains them.
LAYERS: list[set[str]] = [
    {"version", "errors", "atomic", "filecheck", "home", "config", "device", "distributed", "runs"},
    {"models", "data"},
    {"training"},
    {"eval", "probes", "rewards", "graders", "report"},
    {"recipes"},
    {"export", "serve", "jobs", "inference", "quickstart", "plan"},
    {"cli", "<root>", "__main__"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for f in SRC.rglob("*.py"):
        parts = f.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> tunelab modules it imports anywhere in its body (lazy and TYPE_CHECKING imports too)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        package = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")
                root = node.module or ""
                if node.level:
                    base = base[: len(base) - node.level + 1]
                    root = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{root}.{a.name}" if f"{root}.{a.name}" in mods else root for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m and t.startswith("tunelab"):
                    graph[m].add(t)
    return graph


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def _layer(module: str) -> int:
    top = _top(module)
    found = [i for i, layer in enumerate(LAYERS) if top in layer]
    assert found, f"{module}: its package {top!r} has no layer; add it to LAYERS and docs/architecture.md"
    return found[0]


def test_no_import_cycles() -> None:
    graph = _imports(_modules())
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(path[path.index(n):] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_only_go_down_the_layers() -> None:
    graph = _imports(_modules())
    upward = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
              for m, targets in sorted(graph.items()) for t in sorted(targets) if _layer(t) > _layer(m)]
    assert not upward, "\n".join(upward)


def test_the_report_imports_no_training_code() -> None:
    graph = _imports(_modules())
    found = [f"{m} -> {t}" for m, targets in graph.items() if _top(m) == "report"
             for t in targets if _top(t) in ("training", "recipes", "probes", "rewards")]
    assert not found, found


def test_run_directory_file_names_are_written_only_in_the_layout() -> None:
    names = {getattr(layout, k) for k in dir(layout) if k.isupper() and isinstance(getattr(layout, k), str)}
    names = {n for n in names if "." in n}  # file names; folder names like "adapter" are ordinary words
    found = []
    for f in SRC.rglob("*.py"):
        if f == Path(layout.__file__):
            continue
        tree = ast.parse(f.read_text())
        # documentation (docstrings, field docs) may name the files: only strings the code uses count
        docstrings = {id(n.value) for n in ast.walk(tree)
                      if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                hits = [n for n in names if n in node.value]
                if hits:
                    found.append(f"{f.relative_to(SRC)}:{node.lineno}: {hits}")
    assert not found, "use tunelab.runs.layout (or RunDir) instead of the file name:\n" + "\n".join(found)


def test_test_modules_share_helpers_only_through_tests_helpers() -> None:
    tests = Path(__file__).parents[1]
    found = []
    for f in tests.rglob("test_*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            shared = isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("tests."))
            if shared and node.module != "tests.helpers":
                found.append(f"{f.relative_to(tests)}:{node.lineno}: from {'.' * node.level}{node.module}")
    assert not found, found
