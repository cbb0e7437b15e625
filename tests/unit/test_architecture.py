"""The house's map (docs/architecture.md) holds: every import in service/ points down its layers or
sideways within one, no import cycle, and nothing in service/ imports the tools around it."""

import ast
import re

import pytest
from support import ROOT

SERVICE = ROOT / "service"
# Lowest first: a module may import its own layer and the layers below, never one above.
LAYERS = (
    ("base", ("service.errors", "service.config", "service.secrets", "service.filelock")),
    ("store", ("service.store",)),
    ("model", ("service.model",)),
    ("lifecycle", ("service.lifecycle",)),
    ("request path", ("service",)),  # the factory and every module not named above
    ("cli", ("service.cli",)),
)
OUTSIDE = ("simulator", "bench", "tests", "loopback", "deploy")


def module_name(path):
    parts = path.relative_to(SERVICE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name):
    """The index of the layer a module belongs to (the longest matching prefix decides)."""
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = name == prefix or name.startswith(prefix + ".")
            if inside and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    return best[0]


def is_module(name):
    """Whether a dotted name is a module or package of this tree."""
    path = SERVICE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or path.is_dir()


def imports(path):
    """The absolute names a module imports (relative imports resolved), top level and in functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # `from . import x` names submodules: each is an import of its own (the package itself
            # only where a name is not a submodule).
            subs = {f"{target}.{alias.name}" for alias in node.names if is_module(f"{target}.{alias.name}")}
            found.update(subs if len(subs) == len(node.names) else {target, *subs})
    return {n for n in found if n}


MODULES = {module_name(p): imports(p) for p in sorted(SERVICE.rglob("*.py"))}


def test_the_map_knows_every_module():
    assert all(layer(name) is not None for name in MODULES)


def test_the_docs_name_every_module_in_its_layers_row():
    # docs/architecture.md's table is where a reader looks a module up: one it leaves out is one a
    # reader cannot place (an entry point, `__main__`, is its package's).
    table = (ROOT / "docs" / "architecture.md").read_text()
    rows = dict(re.findall(r"^\| (\w[\w ]*?) \| (.*?) \| ", table, re.M))
    unnamed = [name for name in MODULES if "." in name and not name.endswith("__main__")
               and not re.search(rf"`{name.rpartition('.')[2]}/?`", rows[LAYERS[layer(name)][0]])]
    assert unnamed == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down_or_sideways(name):
    upward = [target for target in MODULES[name] if target.startswith("service")
              and target in MODULES and layer(target) > layer(name)]
    assert upward == [], f"{name} ({LAYERS[layer(name)][0]}) imports upward: {upward}"
    outside = [t for t in MODULES[name] if t.split(".")[0] in OUTSIDE]
    assert outside == [], f"{name} imports tools outside the service: {outside}"


def test_no_import_cycle():
    graph = {name: {t for t in targets if t in MODULES and t != name} for name, targets in MODULES.items()}
    # A package imports its own submodules to re-export them; a submodule importing its package's
    # __init__ back is the cycle that matters, and stays an edge here.
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
