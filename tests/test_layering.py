"""The package's shape, checked from its imports (docs/ARCHITECTURE.md): every module imports only from its own
layer or below, no two modules import each other in a loop, the package's own modules are imported inside functions
only to defer something heavy (with the reason on the line), and no file grows past 500 lines."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lgiformer"

# Bottom to top. A module may import from its own layer and the layers below it, never from a layer above.
LAYERS = [
    ["_compat", "errors", "provenance"],
    ["tokens", "layers", "metrics", "distributed", "optim", "masking", "targets"],
    ["au"],
    ["heads"],
    ["models"],
    ["data"],
    ["config", "interop", "inference", "explain"],
    ["tasks"],
    ["engine"],
    ["release", "convert", "predict", "evaluate", "extract", "export", "visualize", "__init__"],
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top not in LAYER_OF:
        raise AssertionError(f"{module}: lgiformer.{top} has no layer in tests/test_layering.py (add it to LAYERS and "
                             f"to docs/ARCHITECTURE.md)")
    return LAYER_OF[top]


def _imports(module: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported lgiformer module, line, inside a function) for every import statement of the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + [base]).strip(".")
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in child.names]
            else:
                visit(child, nested)
                continue
            for name in names:
                if name == "lgiformer" or name.startswith("lgiformer."):
                    while name not in known and "." in name:
                        name = name.rpartition(".")[0]
                    found.append((name, child.lineno, in_function))
    visit(tree, False)
    return found


MODULES = _modules()
GRAPH = {m: _imports(m, p, set(MODULES)) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    for module in MODULES:
        if module != "lgiformer":
            _layer(module)


def test_no_import_runs_up_a_layer():
    upward = sorted({f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {name}"
              for m, edges in GRAPH.items() if m != "lgiformer" for name, line, _ in edges
              if name != "lgiformer" and _layer(name) > _layer(m)})
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_no_import_loop():
    edges = {m: {n for n, _, _ in GRAPH[m] if n != m and n != "lgiformer"} for m in GRAPH}
    # a package's __init__ handing on names from its own modules is not a loop when those never import it back
    state: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                loops.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not loops, "import loops:\n" + "\n".join(" -> ".join(loop) for loop in loops)


def test_own_modules_are_imported_in_functions_only_to_defer_something_heavy():
    """Such an import must say why on its line (``# deferred: ...``): hidden function-level imports are how
    import loops creep back in."""
    bad = set()
    for m, edges in GRAPH.items():
        lines = MODULES[m].read_text().splitlines()
        for name, line, in_function in edges:
            if in_function and "# deferred:" not in lines[line - 1]:
                bad.add(f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {name} inside a function")
    assert not bad, "\n".join(sorted(bad))


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_file_is_over_500_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES, f"{path}: split it by responsibility"


def test_the_checker_sees_a_planted_upward_import_and_loop(tmp_path):
    """The checks above must be able to fail."""
    pkg = tmp_path / "lgiformer"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("from lgiformer.engine import run\n")
    (pkg / "engine.py").write_text("import lgiformer.models\n")
    modules = {"lgiformer": pkg / "__init__.py", "lgiformer.models": pkg / "models" / "__init__.py",
               "lgiformer.engine": pkg / "engine.py"}
    graph = {m: _imports(m, p, set(modules)) for m, p in modules.items()}
    assert ("lgiformer.engine", 1, False) in graph["lgiformer.models"]
    assert _layer("lgiformer.engine") > _layer("lgiformer.models")
    assert ("lgiformer.models", 1, False) in graph["lgiformer.engine"]
