"""The house rules of src/tunewise, read from the code's own imports with ``ast``.

The folders stack in the pipeline's order (``LAYERS``, top first): a module may import from its own
layer or any layer below it, never from one above, and no set of modules may import each other in
a loop. Every import counts, also those inside functions and under ``TYPE_CHECKING``: moving an
import into a function hides a circle from Python, not from the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PKG = SRC / "tunewise"

# Top first. A name two layers need belongs to the lower one (see README, "Where things live").
LAYERS: list[tuple[str, ...]] = [
    ("cli", "__main__"),
    ("ladder",),
    ("train",),
    ("export", "serve", "tracking"),
    ("decide",),
    ("registry",),
    ("eval",),
    ("baselines",),
    ("data",),
    ("runtime",),
    ("config", "config_docs"),
    ("candidates", "errors", "fsio", "numbers", "paths", "progress", "rundir", "rungs", "__init__"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def layer_of(module: str) -> int:
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    for i, names in enumerate(LAYERS):
        if head in names:
            return i
    raise AssertionError(f"{module}: not in any layer of LAYERS; give it one")


def imports_of(module: str, path: Path, known: set[str]) -> dict[str, int]:
    """The tunewise modules that ``module`` imports, each with the line of its first import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != module:
            found.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tunewise"):
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("tunewise"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                add(sub if sub in known else target, node.lineno)
    return found


def graph() -> dict[str, dict[str, int]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def circles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
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
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(edges[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_every_module_has_a_layer():
    for module in modules():
        layer_of(module)


def test_no_import_circles():
    found = circles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_import_points_up_the_layers():
    mods = modules()
    upward = [
        f"{mods[m].relative_to(SRC.parent)}:{line}: {m} imports {target}"
        for m, targets in graph().items()
        for target, line in targets.items()
        if layer_of(target) < layer_of(m)
    ]
    assert not upward, "imports from a lower layer up:\n" + "\n".join(upward)


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path):
    # The rules above can only fail if the checker reads what it should: a two-module loop is a
    # circle, and a relative import resolves to the module it names.
    assert circles({"a": {"b": 1}, "b": {"a": 1}, "c": {"a": 1}}) == [["a", "b"]]
    pkg = tmp_path / "tunewise" / "eval"
    pkg.mkdir(parents=True)
    src = pkg / "x.py"
    src.write_text("from ..decide import gate\nfrom . import results\n", encoding="utf-8")
    known = {"tunewise.decide.gate", "tunewise.eval.results", "tunewise.eval.x"}
    found = imports_of("tunewise.eval.x", src, known)
    assert found == {"tunewise.decide.gate": 1, "tunewise.eval.results": 2}
    assert layer_of("tunewise.decide.gate") < layer_of("tunewise.eval.x")


MAX_FUNCTION_LINES = 80


def test_no_function_is_longer_than_80_lines():
    # Long functions hide several jobs; split them (Typer option declarations go in module-level
    # constants, as in cli/serve_cmd.py, rather than counting against the command).
    long = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC.parent)}:{node.lineno} {node.name} {lines}")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)
