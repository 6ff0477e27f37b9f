"""The package's layers (docs/development.rst): imports run downward or sideways, never upward, and never in a circle.

Every import of the package by the package counts, at module top or inside a function: a function-level import
hides a dependency, it does not remove it.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deeplight_bids"

#: Bottom first. A module belongs to the layer of the longest prefix that names it.
LAYERS = [
    ("foundation", ["_version", "exceptions", "states", "utils", "progress"]),
    ("backend and runtime", ["backend", "runtime", "versions"]),
    (
        "reference grid, output files and settings",
        [
            "prepare.grid",
            "config",
            "derivatives.links",
            "derivatives.naming",
            "derivatives.writers",
            "derivatives.volume_gzip",
            "derivatives.integrity",
        ],
    ),
    ("inputs", ["bids", "prepare"]),
    ("network", ["models", "lrp", "attribution"]),
    ("run outputs and checks", ["derivatives", "readback", "quality", "glm"]),
    ("study level", ["group", "hcp", "demo", "preflight"]),
    ("workflows", ["workflows"]),
    ("command line and public facade", ["cli", "__main__", ""]),
]


def _modules():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(name, path, modules):
    """Modules of the package that ``name`` imports (submodules named in ``from X import sub`` included)."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    base = [p for p in base if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base[: len(base) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            else:
                if not (node.module or "").startswith("deeplight_bids"):
                    continue
                parts = node.module.split(".")[1:]
            target = ".".join(parts)
            submodules = [f"{target}.{a.name}".lstrip(".") for a in node.names]
            submodules = [s for s in submodules if s in modules]
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("deeplight_bids"):
                    found.add(".".join(alias.name.split(".")[1:]))
    found.discard(name)
    return {m for m in found if m in modules}


def _layer(name):
    """Index in :data:`LAYERS` of the module ``name`` (``""``: the root package), or None."""
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or (prefix and name.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    return None if best is None else best[0]


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_module_has_a_layer():
    """A new package or top-level module must be placed in :data:`LAYERS` (and in docs/development.rst)."""
    unplaced = sorted(name for name in _modules() if _layer(name) is None)
    assert not unplaced, f"modules in no layer: {unplaced}"


def test_no_import_runs_upward():
    wrong = [
        f"deeplight_bids.{a} ({LAYERS[_layer(a)][0]}) imports deeplight_bids.{b} ({LAYERS[_layer(b)][0]})"
        for a, targets in sorted(_graph().items())
        for b in sorted(targets)
        if _layer(b) > _layer(a)
    ]
    assert not wrong, "imports against the layer order (docs/development.rst):\n" + "\n".join(wrong)


def test_no_import_circles():
    graph = _graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def _function_level_imports(path):
    """``(line, statement)`` of each import of the package inside a function (not under ``if TYPE_CHECKING:``)."""
    source = path.read_text()
    tree = ast.parse(source)
    lines = source.splitlines()
    found = []

    def visit(node, in_function, type_checking):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function and not type_checking:
                own = isinstance(child, ast.ImportFrom) and (
                    child.level or (child.module or "").startswith("deeplight_bids")
                )
                own = own or any(a.name.startswith("deeplight_bids") for a in getattr(child, "names", []))
                if own:
                    found.append((child, lines[max(child.lineno - 2, 0) : child.end_lineno]))
            visit(
                child,
                in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)),
                type_checking or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)),
            )

    visit(tree, False, False)
    return found


def test_function_level_imports_say_why_they_wait():
    """The package's own imports sit at module top; one that waits in its function says why (docs/development.rst).

    The comment, on the import or the line above it, starts ``# deferred:`` or contains ``deferred:``.
    """
    silent = [
        f"deeplight_bids.{name}:{node.lineno} {ast.unparse(node)}"
        for name, path in sorted(_modules().items())
        for node, lines in _function_level_imports(path)
        if not any("deferred:" in line for line in lines)
    ]
    assert not silent, "function-level imports of the package without a '# deferred: <why>' comment:\n" + "\n".join(
        silent
    )
