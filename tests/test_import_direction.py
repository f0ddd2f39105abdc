"""Imports only point down: read with `ast` (nothing is imported), every module of the four installed packages.

What counts as an import of module A by module B (all of them, wherever they sit in B):
- `import X` and `from X import N` at module level, inside functions (lazy imports) and under
  `if TYPE_CHECKING:`. TYPE_CHECKING imports are counted like the others: they name what a module's types
  depend on, and a type-only import pointing up is the first step of a real one;
- `importlib.import_module("literal")` naming one of our modules;
- a package's lazy name table. `xtf_core` and `xtf_core.chain` define `_LAZY = {name: module}` and load the
  module in `__getattr__` when `name` is first read. So `from xtf_core.chain import Rename` (or
  `xtf_core.chain.Rename` after `import xtf_core.chain`) is an import of `xtf_core.chain.ops`, the module
  that runs; the package's own `__init__` imports none of them. `import xtf_core` to read `__version__`
  is an import of the package's `__init__` only.

Not counted: the chain finds migration step modules by package name (`xtf_migrations`, or the one
`XTF_MIGRATIONS_PACKAGE` names) with `pkgutil`, and the model core finds the plain state dict migrator by
entry point group (`xtf.plain_state`, declared in pyproject.toml). Those are plug-ins found at run time;
the code that finds them names no module of the package above it, which is the point.

The rules:
(a) packages: xtf_core imports none of xtf_converters, xtf_migrations, xtf_cli; xtf_converters imports
    neither xtf_cli nor xtf_migrations; xtf_migrations imports neither xtf_converters nor xtf_cli, and its
    modules import only the chain's building blocks (ops, the step declaration), `xtf_core.errors`, and the
    package's own `_` helper modules (a step never imports another step);
(b) no cycle among modules, module-level and lazy imports together (strongly connected components);
(c) inside xtf_core, the layers of `CORE_LAYERS`: a module imports only modules of its own group (module or
    subpackage) and of lower layers, never a higher layer nor a sibling group of its own layer.

There are no exceptions: a violation is fixed, not listed.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("xtf_core", "xtf_converters", "xtf_migrations", "xtf_cli")

# Bottom to top. A group is a module or a subpackage of xtf_core (every module under it belongs to it).
# The coarse order is loading/verification/spec/distributed above chain, chain above model and checkpoint,
# errors at the bottom; the upper layer is split as the code stands (verification reads through loading,
# loading builds through spec and checks fingerprints and locks), so those stay one-way too.
CORE_LAYERS: tuple[tuple[str, ...], ...] = (
    ("xtf_core.errors", "xtf_core"),  # `xtf_core`: the package __init__ (version, lazy name table)
    ("xtf_core.checkpoint", "xtf_core.model"),  # siblings: the model core knows no files, files no model
    ("xtf_core.chain",),
    ("xtf_core.spec",),
    ("xtf_core.fingerprint", "xtf_core.inspection", "xtf_core.lockfile", "xtf_core.testing"),
    ("xtf_core.loading",),
    ("xtf_core.verification", "xtf_core.distributed"),
)

# What a migration module may import from xtf_core: op values, the step declaration, the errors.
MIGRATION_CORE_IMPORTS = ("xtf_core.chain.ops", "xtf_core.chain.step", "xtf_core.errors")


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool


@dataclass(frozen=True)
class Edge:
    importer: str
    line: int
    imported: str
    how: str  # "module level", "lazy", "TYPE_CHECKING", "import_module", "lazy table"

    def __str__(self) -> str:
        return f"{self.importer} (line {self.line}, {self.how}) imports {self.imported}"


def _installed_modules() -> dict[str, Module]:
    """Every module the wheel installs for our four packages, from pyproject.toml's package list."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dirs = config.get("package-dir", {})
    modules: dict[str, Module] = {}
    for package in config["packages"]:
        top, *rest = package.split(".")
        folder = (
            ROOT / package_dirs.get(top, top) / Path(*rest) if rest else ROOT / package_dirs.get(top, top)
        )
        for path in sorted(folder.glob("*.py")):
            is_package = path.stem == "__init__"
            name = package if is_package else f"{package}.{path.stem}"
            modules[name] = Module(name, path, is_package)
        modules.setdefault(package, Module(package, folder / "__init__.py", True))
    assert set(PACKAGES) <= {name.split(".")[0] for name in modules}, "pyproject.toml lists another layout"
    return modules


MODULES = _installed_modules()
TREES = {name: ast.parse(m.path.read_text(), str(m.path)) for name, m in MODULES.items() if m.path.exists()}


def _lazy_table(name: str) -> dict[str, str]:
    """A package's `_LAZY = {attribute: module}` (module names absolute, or relative to the package)."""
    tree = TREES.get(name)
    for node in tree.body if tree else []:
        if (
            isinstance(node, (ast.Assign, ast.AnnAssign))
            and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in _targets(node))
            and isinstance(node.value, ast.Dict)
        ):
            table = {}
            for key, value in zip(node.value.keys, node.value.values):
                if isinstance(value, ast.DictComp) or key is None:  # `**{name: module for name in (...)}`
                    table.update(_comprehension_table(value))
                else:
                    table[ast.literal_eval(key)] = ast.literal_eval(value)
            return {
                attribute: module if module in MODULES else f"{name}.{module}"
                for attribute, module in table.items()
            }
    return {}


def _targets(node: ast.Assign | ast.AnnAssign) -> list[ast.expr]:
    return node.targets if isinstance(node, ast.Assign) else [node.target]


def _comprehension_table(node: ast.expr) -> dict[str, str]:
    assert isinstance(node, ast.DictComp) and len(node.generators) == 1, ast.dump(node)
    names = ast.literal_eval(node.generators[0].iter)
    return {name: ast.literal_eval(node.value) for name in names}


LAZY_TABLES = {name: table for name in MODULES if MODULES[name].is_package and (table := _lazy_table(name))}


def _resolve(module: Module, level: int, target: str | None) -> str:
    """The absolute name of a (possibly relative) `from` import's module."""
    if not level:
        return target or ""
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    base = package[: len(package) - level + 1]
    return ".".join(base + ([target] if target else []))


def _ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _attribute_target(package: str, attribute: str) -> str:
    """What `from package import attribute` imports: a submodule, a lazy table's module, or the package."""
    if f"{package}.{attribute}" in MODULES:
        return f"{package}.{attribute}"
    return LAZY_TABLES.get(package, {}).get(attribute, package)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, how: str = "module level") -> Iterator[tuple[ast.AST, str]]:
    """Every node with how it runs: at module level, in a function (lazy) or only for type checkers."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for part in child.body:
                yield part, "TYPE_CHECKING"
                yield from _walk(part, "TYPE_CHECKING")
            for part in child.orelse:
                yield part, how
                yield from _walk(part, how)
            continue
        inner = "lazy" if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) else how
        yield child, how
        yield from _walk(child, inner)


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := _dotted(node.value)):
        return f"{base}.{node.attr}"
    return None


def _edges_of(module: Module) -> list[Edge]:
    tree = TREES[module.name]
    edges: list[Edge] = []
    bound: dict[str, str] = {}  # a name bound by `import pkg` / `import pkg as p` -> the package
    for node, how in _walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _ours(alias.name):
                    edges.append(Edge(module.name, line, alias.name, how))
                    bound[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else alias.name.split(".")[0]
                    )
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node.level, node.module)
            if _ours(source):
                for alias in node.names:
                    edges.append(Edge(module.name, line, _attribute_target(source, alias.name), how))
        elif isinstance(node, ast.Call) and _dotted(node.func) in (
            "importlib.import_module",
            "import_module",
        ):
            argument = node.args[0] if node.args else None
            if (
                isinstance(argument, ast.Constant)
                and isinstance(argument.value, str)
                and _ours(argument.value)
            ):
                edges.append(Edge(module.name, line, argument.value, "import_module"))
    # `import xtf_core` then `xtf_core.build(...)`: the attribute read imports what the lazy table names
    for node, _ in _walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and (path := _dotted(node)):
            head, *attributes = path.split(".")
            package = bound.get(head)
            for attribute in attributes if package else []:
                target = _attribute_target(package, attribute)
                if target == package:
                    break
                if target not in MODULES:
                    break
                if target != f"{package}.{attribute}":  # a lazy table entry
                    edges.append(Edge(module.name, node.lineno, target, "lazy table"))
                    break
                package = target
    for attribute, target in LAZY_TABLES.get(module.name, {}).items():
        edges.append(Edge(module.name, 0, target, f"lazy table ({attribute})"))
    return edges


EDGES = list(dict.fromkeys(edge for name in sorted(TREES) for edge in _edges_of(MODULES[name])))


def _graph(edges: list[Edge]) -> dict[str, set[str]]:
    """Module -> modules it imports. A package's lazy table is not an edge of the package: its entries are
    followed from the importer that names the attribute (see the module docstring)."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for edge in edges:
        if not edge.how.startswith("lazy table ("):
            graph[edge.importer].add(edge.imported)
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module, or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return found


def _core_group(name: str) -> tuple[int, str]:
    """(layer, group) of an xtf_core module: the longest group of CORE_LAYERS that contains it."""
    best: tuple[int, str] | None = None
    for layer, groups in enumerate(CORE_LAYERS):
        for group in groups:
            contains = name == group or (group != "xtf_core" and name.startswith(f"{group}."))
            if contains and (best is None or len(group) > len(best[1])):
                best = (layer, group)
    assert best is not None, f"{name} is in no layer of CORE_LAYERS: place it there"
    return best


def _package_violations(edge: Edge) -> str | None:
    importer, imported = edge.importer.split(".")[0], edge.imported.split(".")[0]
    forbidden = {
        "xtf_core": ("xtf_converters", "xtf_migrations", "xtf_cli"),
        "xtf_converters": ("xtf_cli", "xtf_migrations"),
        "xtf_migrations": ("xtf_converters", "xtf_cli"),
    }
    if imported in forbidden.get(importer, ()):
        return f"{importer} must not import {imported}"
    if importer == "xtf_migrations":
        if imported == "xtf_core" and edge.imported not in MIGRATION_CORE_IMPORTS:
            return f"a migration module imports only {', '.join(MIGRATION_CORE_IMPORTS)} from xtf_core"
        if imported == "xtf_migrations":
            leaf = edge.imported.rsplit(".", 1)[-1]
            if edge.imported != "xtf_migrations" and not leaf.startswith("_"):
                return "a migration module imports only the package's `_` helper modules, never a step"
    return None


def _layer_violation(edge: Edge) -> str | None:
    if not (edge.importer.startswith("xtf_core") and edge.imported.startswith("xtf_core")):
        return None
    (low, own), (high, other) = _core_group(edge.importer), _core_group(edge.imported)
    if own == other or high < low:
        return None
    where = "a higher layer" if high > low else "a sibling group of its own layer"
    return f"{own} (layer {low}) imports {other}, {where} (layer {high})"


def _counted(edges: list[Edge]) -> list[Edge]:
    return [e for e in edges if not e.how.startswith("lazy table (")]


def _found(rule) -> dict[Edge, str]:
    return {e: f"{e}: {why}" for e in _counted(EDGES) if (why := rule(e))}


def _unexpected(found: dict[Edge, str]) -> list[str]:
    return sorted(found.values())


def test_the_reader_sees_every_kind_of_import() -> None:
    """The walk finds what the rules rely on (so an empty list of violations means something)."""
    by_importer = {(e.importer, e.imported, e.how) for e in EDGES}
    assert ("xtf_core.loading", "xtf_core.lockfile.enforce", "TYPE_CHECKING") in by_importer
    assert ("xtf_core.loading", "xtf_core.chain.memory", "lazy") in by_importer
    assert ("xtf_core.model.blocks", "xtf_core.model.attention", "module level") in by_importer
    # `from xtf_core.chain import Rename` is an import of the module the lazy table loads
    assert ("xtf_migrations.xt_0_33_0_ff_rename", "xtf_core.chain.ops", "module level") in by_importer
    assert ("xtf_cli.cli", "xtf_converters.xtransformers", "lazy") in by_importer
    for package, table in LAZY_TABLES.items():
        missing = sorted(module for module in table.values() if module not in MODULES)
        assert not missing, f"{package}._LAZY names modules that do not exist: {missing}"
    assert {"xtf_core", "xtf_core.chain"} <= set(LAZY_TABLES)
    assert len([m for m in MODULES if m.startswith("xtf_migrations.xt_")]) > 20


def test_every_core_module_has_a_layer() -> None:
    for name in MODULES:
        if name.startswith("xtf_core"):
            _core_group(name)


def test_packages_import_only_downwards() -> None:
    """(a): core < converters < cli; migrations import only chain building blocks, errors and `_` helpers."""
    problems = _unexpected(_found(_package_violations))
    assert not problems, "imports pointing up or across packages:\n" + "\n".join(problems)


def test_no_import_cycles() -> None:
    """(b): module-level, lazy and TYPE_CHECKING imports together form no cycle."""
    cycles = _strongly_connected(_graph(_counted(EDGES)))
    assert not cycles, "import cycles (strongly connected modules):\n" + "\n".join(
        " <-> ".join(component) for component in cycles
    )


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "d"}, "e": {"f"}, "f": set()}
    assert sorted(_strongly_connected(graph)) == [["a", "b", "c"], ["d"]]


def test_core_layers_point_down() -> None:
    """(c): inside xtf_core, a module imports its own group or lower layers only."""
    problems = _unexpected(_found(_layer_violation))
    assert not problems, "xtf_core imports against CORE_LAYERS:\n" + "\n".join(problems)


def test_the_rules_catch_upward_imports() -> None:
    """Each rule flags a made-up import pointing the wrong way (the rules are not vacuous)."""
    assert _package_violations(Edge("xtf_core.model.spec_record", 1, "xtf_converters.plain_state", "lazy"))
    assert _package_violations(Edge("xtf_converters.dcp", 1, "xtf_cli.cli", "lazy"))
    assert _package_violations(Edge("xtf_migrations.xt_0_9_0_scalenorm", 1, "xtf_core.spec", "module level"))
    assert _package_violations(Edge("xtf_migrations._xt", 1, "xtf_migrations.xt_0_9_0_scalenorm", "lazy"))
    assert not _package_violations(Edge("xtf_migrations.xt_0_9_0_scalenorm", 1, "xtf_migrations._xt", "x"))
    assert _layer_violation(Edge("xtf_core.chain.plan", 1, "xtf_core.spec", "lazy"))
    assert _layer_violation(Edge("xtf_core.model.layers", 1, "xtf_core.checkpoint.stamp", "lazy"))
    assert _layer_violation(Edge("xtf_core.errors", 1, "xtf_core.chain.graph", "lazy"))
    assert not _layer_violation(Edge("xtf_core.loading", 1, "xtf_core.chain.memory", "lazy"))
