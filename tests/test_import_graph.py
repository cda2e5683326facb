"""The house rules of src/tunewise, read from the code's own imports with ``ast``.

The folders stack in the pipeline's order (``LAYERS``, top first): a module may import from its own
layer or any layer below it, never from one above, and no set of modules may import each other in
a loop. Every import counts, also those inside functions and under ``TYPE_CHECKING``: moving an
import into a function hides a circle from Python, not from the design.
"""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
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


# --- function-local imports ---------------------------------------------------------------------
# An import inside a function hides a dependency from the reader and from the rules above; it is
# worth that only where the library is slow to import (or pulls torch) and most callers never need
# it. numpy is not on the list: ~0.1 s, and most of the package needs it anyway.
HEAVY = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "bitsandbytes",
    "sentence_transformers",
    "faiss",
    "mlflow",
    "matplotlib",
    "sklearn",
    "datasets",
    "gguf",
    "fastapi",
    "uvicorn",
    "bm25s",
    "jinja2",
    "trl",
    "safetensors.torch",
    "huggingface_hub",
    "datasketch",
    "scipy",
)

Importing = ast.Import | ast.ImportFrom


def heavy_name(name: str) -> str | None:
    """The entry of :data:`HEAVY` that importing ``name`` loads, if any."""
    return next((h for h in HEAVY if name == h or name.startswith(h + ".")), None)


def imported(module: str, path: Path, node: Importing, known: set[str]) -> list[str]:
    """The dotted names ``node`` loads: the module it names, and each tunewise submodule it
    takes from a package (``from tunewise.eval import human`` loads ``tunewise.eval.human``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    target = node.module or ""
    if node.level:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        base = package.split(".")
        target = ".".join(base[: len(base) - (node.level - 1)] + ([target] if target else []))
    subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
    return [target, *subs]


def split_imports(tree: ast.Module) -> tuple[list[Importing], list[Importing]]:
    """(imports that run on import, imports inside a function); ``if TYPE_CHECKING:`` blocks
    outside functions never run, so they are in neither."""
    top: list[Importing] = []
    local: list[Importing] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                (local if in_function else top).append(child)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, True)
            elif (
                not in_function
                and isinstance(child, ast.If)
                and "TYPE_CHECKING" in ast.unparse(child.test)
            ):
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), False)
            else:
                visit(child, in_function)

    visit(tree, False)
    return top, local


def heavy_modules() -> dict[str, set[str]]:
    """For every tunewise module, the :data:`HEAVY` libraries that importing it loads through
    module-level imports (its own, its packages' and theirs, transitively)."""
    mods = modules()
    known = set(mods)
    direct: dict[str, set[str]] = {}
    deps: dict[str, set[str]] = {}
    for m, path in mods.items():
        top, _ = split_imports(ast.parse(path.read_text(encoding="utf-8")))
        names = [n for node in top for n in imported(m, path, node, known)]
        direct[m] = {h for n in names if (h := heavy_name(n))}
        loaded = {n for n in names if n.startswith("tunewise")} | {m}
        deps[m] = {p for n in loaded if (p := _enclosing(n, known))} | _packages(m, known)
    heavy: dict[str, set[str]] = {}
    for m in mods:
        seen, todo = {m}, [m]
        while todo:
            for d in deps[todo.pop()] - seen:
                seen.add(d)
                todo.append(d)
        heavy[m] = set().union(*(direct[d] for d in seen))
    return heavy


def _enclosing(name: str, known: set[str]) -> str | None:
    """The tunewise module that ``name`` (a module or a name in one) lives in."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _packages(module: str, known: set[str]) -> set[str]:
    """The packages Python imports before ``module``: tunewise.eval before tunewise.eval.stats."""
    parts = module.split(".")
    return {p for i in range(1, len(parts)) if (p := ".".join(parts[:i])) in known}


def unexplained_local_imports(
    module: str, path: Path, known: set[str], heavy: dict[str, set[str]]
) -> list[tuple[int, str]]:
    """Imports inside functions of ``module`` that load nothing heavy and say nowhere why they
    are there: no comment on the import, nor on the line above it (or above the run of imports
    it belongs to)."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text)
    _, local = split_imports(tree)
    previous = _previous_imports(tree)
    found = []
    for node in local:
        names = imported(module, path, node, known)
        if any(heavy_name(n) for n in names):
            continue
        tunewise = [m for n in names if n.startswith("tunewise") and (m := _enclosing(n, known))]
        if any(heavy.get(m) for m in tunewise):
            continue
        span = lines[node.lineno - 1 : node.end_lineno]
        if not any("#" in line for line in span) and not _comment_above(node, lines, previous):
            found.append((node.lineno, span[0].strip()))
    return found


def _comment_above(node: Importing, lines: list[str], previous: dict[int, Importing]) -> bool:
    """Whether a comment line sits right above ``node`` or above the imports right before it."""
    while True:
        if lines[node.lineno - 2].strip().startswith("#"):
            return True
        before = previous.get(id(node))
        if before is None or before.end_lineno != node.lineno - 1:
            return False
        node = before


def _previous_imports(tree: ast.Module) -> dict[int, Importing]:
    """For each import statement that follows another in the same block, that other one."""
    previous: dict[int, Importing] = {}
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if not isinstance(stmts, list):  # an expression's body (lambda, if-else) is no block
                continue
            for before, stmt in itertools.pairwise(stmts):
                if isinstance(before, Importing) and isinstance(stmt, Importing):
                    previous[id(stmt)] = before
    return previous


def test_function_local_imports_are_heavy_or_say_why():
    # Hoist a light import to the top of its module; keep one inside a function only when it
    # names a heavy library (or a tunewise module that loads one), or say why beside it.
    mods = modules()
    known = set(mods)
    heavy = heavy_modules()
    found = [
        f"{p.relative_to(SRC.parent)}:{line}: {text}"
        for m, p in mods.items()
        for line, text in unexplained_local_imports(m, p, known, heavy)
    ]
    listing = "\n".join(found)
    assert not found, f"light imports inside functions, with no comment saying why:\n{listing}"


def test_the_local_import_checker_tells_heavy_from_light(tmp_path):
    # The rule above can only fail if the checker reads what it should: a light import in a
    # function is reported; a heavy library, a tunewise module that loads one, a commented import,
    # a run of imports under a comment and a TYPE_CHECKING block are not.
    pkg = tmp_path / "tunewise"
    pkg.mkdir()
    src = pkg / "x.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import torch\n"
        "def f():\n"
        "    import json\n"  # line 5: light, no reason given
        "    import torch.nn\n"
        "    from . import heavy\n"  # line 7: heavy only through what tunewise.heavy imports
        "    # lazy: a reason\n"
        "    import os\n"
        "    import re\n"
        "    import socket  # lazy: a reason\n",
        encoding="utf-8",
    )
    (pkg / "heavy.py").write_text("import scipy\n", encoding="utf-8")
    known = {"tunewise.x", "tunewise.heavy"}
    top, local = split_imports(ast.parse(src.read_text(encoding="utf-8")))
    assert ([n.lineno for n in top], len(local)) == ([1], 6)
    assert heavy_name("safetensors.torch") and not heavy_name("safetensors")
    heavy = {"tunewise.heavy": {"scipy"}, "tunewise.x": set()}
    assert unexplained_local_imports("tunewise.x", src, known, heavy) == [(5, "import json")]
    light = {"tunewise.heavy": set(), "tunewise.x": set()}
    found = unexplained_local_imports("tunewise.x", src, known, light)
    assert found == [(5, "import json"), (7, "from . import heavy")]


def test_importing_the_cli_loads_no_torch():
    # `tunewise --help` must start fast: the commands import the library (and torch with it) when
    # they run, not when the CLI is imported.
    code = (
        "import sys, tunewise.cli; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
