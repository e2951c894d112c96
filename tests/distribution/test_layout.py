"""The package's architecture, checked by reading its imports.

``docs/design.md`` states the rules; these tests keep them true:

- every module under ``src/handlers`` imports only the standard library, ``dnspython`` and
  the package itself (relative imports), so the folder can be vendored; optional extras
  are imported inside the functions that use them;
- internals live in ``_``-prefixed packages grouped by domain, each at a layer, and a
  module imports only from lower layers or from its own package: the MIME code knows no
  protocol, the shared internals know no protocol, nothing imports its caller;
- there are no import cycles, counting imports made only for type checking or inside
  functions.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from paths import PACKAGE

# Lower numbers are lower layers. A module may import a unit of a lower layer, or a
# sibling inside its own unit. A unit is a top-level module or a `_` package.
LAYERS: dict[str, int] = {
    "errors": 0,
    "_net": 1,
    "_auth": 2,
    "_sasl": 2,
    "_mime": 2,
    "_dns": 2,
    "retry": 2,
    "validation": 3,
    "_dkim": 3,
    "_smtp": 4,
    "_pop3": 4,
    "_sync": 5,
    "smtp": 6,
    "pop3": 6,
    "__init__": 7,
}

THIRD_PARTY_AT_IMPORT_TIME = {"dns"}


def _modules() -> Iterator[Path]:
    yield from sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    """Dotted name relative to the package: ``_smtp.pool``, ``smtp``, ``__init__``."""
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if len(parts) > 1 and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _unit(module: str) -> str:
    return module.split(".")[0]


def _resolve(module: str, path: Path, level: int, target: str | None) -> str:
    """The package-relative dotted name a relative import points at."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py" or package == ["__init__"]:
        package = package[:-1]
    if level > 1:
        package = package[: len(package) - (level - 1)]
    return ".".join([*package, *([target] if target else [])])


def _imports(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line, what, is_relative) for every import in the file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = _module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, False
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve(module, path, node.level, node.module)
                if node.module is None:
                    for alias in node.names:
                        yield node.lineno, ".".join(p for p in (base, alias.name) if p), True
                else:
                    yield node.lineno, base, True
            else:
                assert node.module is not None
                yield node.lineno, node.module, False


def _top_level_absolute_imports(path: Path) -> Iterator[tuple[int, str]]:
    """Absolute imports that run when the module is imported (not inside a function)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def walk(nodes: list[ast.stmt]) -> Iterator[tuple[int, str]]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield node.lineno, alias.name
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                yield node.lineno, node.module
            elif isinstance(node, ast.If | ast.Try | ast.With):
                # `if TYPE_CHECKING:` blocks never run; other blocks do.
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                    continue
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []):
                        if isinstance(child, ast.ExceptHandler):
                            yield from walk(child.body)
                        else:
                            yield from walk([child])

    yield from walk(tree.body)


def _graph() -> dict[str, set[str]]:
    known = {_module_name(p) for p in _modules()}
    graph: dict[str, set[str]] = {}
    for path in _modules():
        name = _module_name(path)
        edges = graph.setdefault(name, set())
        for _, target, relative in _imports(path):
            if not relative:
                continue
            # `from . import x` names a module when x is one, else a package's attribute.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
    return graph


def test_every_unit_has_a_layer() -> None:
    units = {_unit(_module_name(p)) for p in _modules()}
    assert units <= set(LAYERS), f"give these a layer in LAYERS: {sorted(units - set(LAYERS))}"


def test_internal_packages_are_private() -> None:
    for child in PACKAGE.iterdir():
        if child.is_dir() and child.name != "__pycache__":
            assert child.name.startswith("_"), f"{child.name}/ is internal: prefix it with _"


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: _module_name(p))
def test_imports_only_stdlib_dnspython_and_itself(path: Path) -> None:
    allowed = set(sys.stdlib_module_names) | THIRD_PARTY_AT_IMPORT_TIME
    for line, name in _top_level_absolute_imports(path):
        root = name.split(".")[0]
        assert root in allowed, (
            f"{path.name}:{line} imports {name} at import time; the package must be "
            "self-contained (import optional extras inside the function that needs them)"
        )


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: _module_name(p))
def test_imports_go_down_the_layers(path: Path) -> None:
    name = _module_name(path)
    unit = _unit(name)
    for target in sorted(_graph()[name]):
        target_unit = _unit(target)
        if target_unit == unit:
            continue
        assert LAYERS[target_unit] < LAYERS[unit], (
            f"{name} imports {target}: {unit} (layer {LAYERS[unit]}) may only import "
            "lower layers or its own package"
        )


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_design_note_lists_every_internal_package() -> None:
    design = (PACKAGE.parents[1] / "docs" / "design.md").read_text(encoding="utf-8")
    for child in sorted(PACKAGE.iterdir()):
        if child.is_dir() and child.name.startswith("_") and child.name != "__pycache__":
            assert f"`{child.name}/`" in design, f"docs/design.md does not describe {child.name}/"
