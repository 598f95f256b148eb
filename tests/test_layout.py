"""The package's folders are layers: every import points down (or stays in its folder), and no modules import
each other in a circle. Lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "zf_lightning"
# Bottom to top; a folder may import from its own layer's folders only where listed in the same tuple.
LAYERS = [
    ("utils",),
    ("models",),
    ("data",),
    ("transfer",),
    ("deconv",),
    ("analysis", "tables"),
    ("visualize",),
    ("callbacks",),
    ("config",),
    ("cli",),
    ("testing",),
]
RANK = {folder: rank for rank, folders in enumerate(LAYERS) for folder in folders}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zf_lightning"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("zf_lightning")}
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}


def folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def test_every_folder_is_a_layer():
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    assert folders == set(RANK)


def test_every_import_points_down():
    upward = []
    for module, imported in graph().items():
        for target in imported:
            here, there = folder(module), folder(target)
            if here and there and RANK[there] > RANK[here]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_modules_import_each_other_in_a_circle():
    edges = graph()
    known = set(edges)

    def resolve(target: str) -> str | None:  # `from zf_lightning.x import y` may name module x.y or a name in x
        return target if target in known else None

    circles, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for target in sorted(filter(None, map(resolve, edges[module]))):
            if target == module:
                continue
            if state.get(target) == "open":
                circles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert circles == []
