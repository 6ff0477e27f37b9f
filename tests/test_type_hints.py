"""Every public function and method of the package states its types (``mypy`` checks them in CI: .ci/run)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deeplight_bids"


def _public_functions(tree):
    """``(qualified name, node)`` of the module's public functions and the public methods of its public classes."""
    found = []

    def visit(body, prefix=""):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                found.append((prefix + node.name, node))
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                visit(node.body, f"{prefix}{node.name}.")

    visit(tree.body)
    return found


def _unhinted(node):
    """Parameters without a type (``self``, ``cls`` and ``*args``/``**kwargs`` aside) and a missing return type."""
    args = node.args
    params = [a for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg not in ("self", "cls")]
    missing = [a.arg for a in params if a.annotation is None]
    if node.returns is None and node.name != "__init__":
        missing.append("return")
    return missing


def test_every_public_function_has_type_hints():
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for name, node in _public_functions(ast.parse(path.read_text())):
            gaps = _unhinted(node)
            if gaps:
                missing.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {name}: {', '.join(gaps)}")
    assert not missing, f"{len(missing)} public function(s) without type hints:\n" + "\n".join(missing)
