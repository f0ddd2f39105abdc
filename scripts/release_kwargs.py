"""Derive, from the code of every x-transformers release, which constructor keyword arguments it accepted.

For each release and each constructor a config names (TransformerWrapper, ContinuousTransformerWrapper,
AttentionLayers and its Encoder/Decoder/CrossAttender subclasses), the rule the release applied:
- `params`: the keyword names its `__init__` takes;
- `var_kw`: whether it also takes `**kwargs` (without it, any other name raised TypeError);
- `routes`: the prefixes it split off `**kwargs` (`groupby_prefix_and_trim`) and the class each group went to
  (`attn_`/`cross_attn_` -> Attention, `ff_` -> FeedForward), with that class's keyword names (or "*" when it
  took `**kwargs` too), less those the stack passed itself: a prefixed name the class did not take raised
  TypeError. "unused" when the group was split off and passed nowhere (every such name was dropped);
- `leftover`: what happened to the rest of `**kwargs` after the split: "drop" (silently ignored; before
  1.29.0) or "raise" (an `assert` on them);
- `fixed`: names a subclass passed itself to `AttentionLayers.__init__` (`causal`, `cross_attend`, ...), which
  the user could not pass again.

Written to converters/release_kwargs.json compactly: per class, per fact (`exists`, `var_kw`,
`leftover_raises`, each name of `params` and `fixed`, each route's `exists`/`any` and target names), the
ranges `[first, last]` of releases (in release order) where the fact holds; `releases` lists every release
read and `ranges` the runs of releases that parse every class identically. converters/release_kwargs.py
rebuilds a release's rules from it.

The code is read, never run: each release's `x_transformers/x_transformers.py` (and `continuous.py`, home of
ContinuousTransformerWrapper from 1.24.0) is parsed with `ast`. The
source of a release is its PyPI wheel (`pip download --no-deps`, cached under .xt-releases/wheels/), or an
installed copy in .xt-releases/<version> (tests/xt_releases.py), or, with `--git DIR`, the release's tag in a
clone of the x-transformers repository (fast; `--check-wheels N` compares N tag sources with their wheels).

    python scripts/release_kwargs.py [--git /path/to/x-transformers] [--only 1.26.0 ...]
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "converters" / "release_kwargs.json"
CACHE = REPO / ".xt-releases" / "wheels"
MODULE = "x_transformers/x_transformers.py"
# ContinuousTransformerWrapper moved here in 1.23.6
MODULES = (MODULE, "x_transformers/continuous.py")
LAYER_CLASSES = ("Encoder", "Decoder", "CrossAttender")
ROUTE_TARGETS = {"attn_": "Attention", "cross_attn_": "Attention", "ff_": "FeedForward"}

sys.path.insert(0, str(REPO / "tests"))


def pypi_releases() -> list[str]:
    """Every release PyPI lists (one `pip index versions` call)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "x-transformers"],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(line for line in proc.stdout.splitlines() if line.startswith("Available versions:"))
    return sorted((v.strip() for v in line.split(":", 1)[1].split(",") if v.strip()), key=version_key)


def version_key(version: str) -> tuple:
    from packaging.version import Version

    return (Version(version),)


def source_from_wheel(version: str) -> dict[str, str]:
    CACHE.mkdir(parents=True, exist_ok=True)

    def cached() -> list[Path]:
        return list(CACHE.glob(f"x_transformers-{version}-*.whl")) + list(
            CACHE.glob(f"x_transformers-{version}.tar.gz")
        )

    if not cached():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "-q",
                "-d",
                str(CACHE),
                f"x-transformers=={version}",
            ],
            check=True,
            capture_output=True,
        )
    path = cached()[0]
    sources = {}
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            for module in MODULES:
                if module in wheel.namelist():
                    sources[module] = wheel.read(module).decode()
        return sources
    import tarfile

    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            for module in MODULES:
                if member.name.endswith("/" + module):
                    sources[module] = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
    return sources


def source_from_install(version: str) -> dict[str, str] | None:
    root = REPO / ".xt-releases" / version
    if not (root / ".xtf-installed").exists():
        return None
    return {m: (root / m).read_text() for m in MODULES if (root / m).is_file()}


def source_from_git(git: Path, version: str) -> dict[str, str] | None:
    for tag in (version, f"v{version}"):
        sources = {}
        for module in MODULES:
            proc = subprocess.run(
                ["git", "--git-dir", str(git), "show", f"{tag}:{module}"], capture_output=True
            )
            if proc.returncode == 0:
                sources[module] = proc.stdout.decode()
        if MODULE in sources:
            return sources
    return None


# ------------------------------------------------------------------------------------ reading the code


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _init(cls: ast.ClassDef) -> ast.FunctionDef | None:
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            return node
    return None


def _signature(fn: ast.FunctionDef) -> tuple[list[str], bool]:
    args = fn.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg != "self"]
    return names, args.kwarg is not None


def _walk_own(fn: ast.FunctionDef):
    """Nodes of a function body, not descending into nested functions or classes."""
    stack = list(fn.body)
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                stack.append(child)


def _target_keywords(tree: ast.Module, name: str) -> list[str] | str:
    """The keyword names class `name` takes, or "*" when it takes **kwargs as well."""
    cls = _classes(tree).get(name)
    init = _init(cls) if cls else None
    if init is None:
        return []
    names, var_kw = _signature(init)
    return "*" if var_kw else sorted(names)


def _stack_rule(tree: ast.Module, cls: ast.ClassDef) -> dict:
    init = _init(cls)
    assert init is not None
    params, var_kw = _signature(init)
    routes: dict[str, list[str] | str] = {}
    leftover = "drop" if var_kw else "raise"
    kwarg = init.args.kwarg.arg if init.args.kwarg else None
    group_vars: dict[str, str] = {}
    for node in _walk_own(init):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and node.value.func.id in ("groupby_prefix_and_trim", "group_by_key_prefix_and_trim")
            and isinstance(node.targets[0], ast.Tuple)
            and isinstance(node.targets[0].elts[0], ast.Name)
            and node.value.args
            and isinstance(node.value.args[0], ast.Constant)
        ):
            group_vars[node.value.args[0].value] = node.targets[0].elts[0].id
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("groupby_prefix_and_trim", "group_by_key_prefix_and_trim")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            prefix = node.args[0].value
            routes[prefix] = _target_keywords(tree, ROUTE_TARGETS.get(prefix, ""))
        if isinstance(node, (ast.Assert, ast.Raise)) and kwarg is not None:
            test = node.test if isinstance(node, ast.Assert) else node
            if any(isinstance(n, ast.Name) and n.id == kwarg for n in ast.walk(test)):
                leftover = "raise"
    loaded = {n.id for n in ast.walk(init) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    for prefix, var in group_vars.items():
        if prefix in routes and var not in loaded:
            routes[prefix] = "unused"  # split off and passed nowhere: every such name was dropped (0.0.x)
    for prefix, names in routes.items():
        if isinstance(names, list):
            target = ROUTE_TARGETS.get(prefix, "")
            taken = _passed_explicitly(tree, init, target)
            routes[prefix] = [n for n in names if n not in taken]
    return {
        "params": sorted(params),
        "var_kw": var_kw,
        "routes": dict(sorted(routes.items())),
        "leftover": leftover,
        "fixed": [],
    }


def _passed_explicitly(tree: ast.Module, init: ast.FunctionDef, target: str) -> set[str]:
    """Names the stack passes to `target` itself (`Attention(dim, heads = heads, **attn_kwargs)`: dim, heads),
    directly or through `partial`; the same name in the prefixed group raised TypeError (multiple values)."""
    cls = _classes(tree).get(target)
    target_init = _init(cls) if cls else None
    positional = (
        [a.arg for a in target_init.args.posonlyargs + target_init.args.args][1:] if target_init else []
    )
    taken: set[str] = set()
    for node in _walk_own(init):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        args = node.args
        if node.func.id == "partial" and args and isinstance(args[0], ast.Name) and args[0].id == target:
            args = args[1:]
        elif node.func.id != target:
            continue
        taken.update(k.arg for k in node.keywords if k.arg)
        taken.update(positional[: len([a for a in args if not isinstance(a, ast.Starred)])])
    return taken


def _fixed_by_subclass(cls: ast.ClassDef) -> list[str] | None:
    """For `class Decoder(AttentionLayers): def __init__(self, **kwargs): super().__init__(causal=True, **kwargs)`:
    the names it passes itself (plus those it asserts are absent); None when it parses its own arguments."""
    init = _init(cls)
    if init is None:
        return []
    params, var_kw = _signature(init)
    if params or not var_kw:
        return None
    fixed = set()
    for node in _walk_own(init):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "__init__"
        ):
            fixed.update(k.arg for k in node.keywords if k.arg)
        if isinstance(node, ast.Assert):
            for n in ast.walk(node.test):
                if (
                    isinstance(n, ast.Compare)
                    and isinstance(n.left, ast.Constant)
                    and isinstance(n.left.value, str)
                ):
                    fixed.add(n.left.value)
    return sorted(fixed)


def rules_of(sources: dict[str, str]) -> dict:
    """{class name: rule} for one release's sources."""
    tree = ast.parse(sources[MODULE])
    classes = _classes(tree)
    rules: dict[str, dict] = {}
    for name in ("TransformerWrapper", "ContinuousTransformerWrapper"):
        cls = classes.get(name)
        if cls is None:
            for module, text in sources.items():
                if module != MODULE:
                    cls = _classes(ast.parse(text)).get(name) or cls
        if cls is not None and _init(cls) is not None:
            params, var_kw = _signature(_init(cls))  # type: ignore[arg-type]
            rules[name] = {
                "params": sorted(params),
                "var_kw": var_kw,
                "routes": {},
                "leftover": "drop" if var_kw else "raise",
                "fixed": [],
            }
    base = classes.get("AttentionLayers")
    base_rule = _stack_rule(tree, base) if base is not None and _init(base) is not None else None
    if base_rule is not None:
        rules["AttentionLayers"] = base_rule
    for name in LAYER_CLASSES:
        cls = classes.get(name)
        if cls is None:
            continue
        fixed = _fixed_by_subclass(cls)
        bases = [b.id for b in cls.bases if isinstance(b, ast.Name)]
        if fixed is not None and base_rule is not None and "AttentionLayers" in bases:
            rules[name] = {**base_rule, "fixed": fixed}
        elif _init(cls) is not None:
            rules[name] = _stack_rule(tree, cls)
    return rules


def _intervals(releases: list[str], holds: list[bool]) -> list[list[str]]:
    """Runs of consecutive releases (in release order) where `holds` is true, as [first, last]."""
    runs: list[list[str]] = []
    previous = False
    for version, value in zip(releases, holds):
        if value and previous:
            runs[-1][1] = version
        elif value:
            runs.append([version, version])
        previous = value
    return runs


def compact(per_release: dict[str, dict]) -> dict:
    """Per class, per fact (a parameter name, a routed prefix and each name its target takes, `**kwargs`,
    leftovers raising, a fixed name): the release ranges where it holds. Names are added and removed
    rarely, so this stays small; `ranges` lists the runs of releases that parse every class the same way."""
    releases = sorted(per_release, key=version_key)
    facts: dict[str, dict] = {}
    for name in sorted({cls for rules in per_release.values() for cls in rules}):
        rules = [per_release[v].get(name) for v in releases]
        present = [r is not None for r in rules]
        entry: dict = {"exists": _intervals(releases, present)}
        entry["var_kw"] = _intervals(releases, [bool(r and r["var_kw"]) for r in rules])
        entry["leftover_raises"] = _intervals(
            releases, [bool(r and r["var_kw"] and r["leftover"] == "raise") for r in rules]
        )
        for key in ("params", "fixed"):
            names = sorted({n for r in rules if r for n in r[key]})
            entry[key] = {n: _intervals(releases, [bool(r and n in r[key]) for r in rules]) for n in names}
        routes: dict = {}
        for prefix in sorted({p for r in rules if r for p in r["routes"]}):
            targets = [r["routes"].get(prefix) if r else None for r in rules]
            names = sorted({n for t in targets if isinstance(t, list) for n in t})
            routes[prefix] = {
                "exists": _intervals(releases, [t is not None for t in targets]),
                "any": _intervals(releases, [t == "*" for t in targets]),
                "unused": _intervals(releases, [t == "unused" for t in targets]),
                "names": {
                    n: _intervals(releases, [isinstance(t, list) and n in t for t in targets]) for n in names
                },
            }
        entry["routes"] = routes
        facts[name] = entry
    ranges: list[list[str]] = []
    for version in releases:
        if ranges and per_release[version] == per_release[ranges[-1][1]]:
            ranges[-1][1] = version
        else:
            ranges.append([version, version])
    return {"releases": releases, "ranges": ranges, "classes": facts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--git", type=Path, help="a clone (or bare git dir) of x-transformers, read by tag")
    parser.add_argument("--only", nargs="*", help="print the rules of these releases and write nothing")
    parser.add_argument("--check-wheels", type=int, default=0, help="compare N tag sources with their wheels")
    args = parser.parse_args()
    git = None
    if args.git is not None:
        git = args.git / ".git" if (args.git / ".git").exists() else args.git
    releases = args.only or pypi_releases()
    per_release: dict[str, dict] = {}
    origin: dict[str, str] = {}
    for version in releases:
        source = source_from_install(version)
        origin[version] = "installed wheel"
        if source is None and git is not None:
            source = source_from_git(git, version)
            origin[version] = "git tag"
        if source is None:
            source = source_from_wheel(version)
            origin[version] = "wheel"
        try:
            per_release[version] = rules_of(source)
        except SyntaxError as exc:
            print(f"{version}: cannot parse ({exc}); skipped", file=sys.stderr)
    if args.check_wheels and git is not None:
        tagged = [v for v in releases if origin.get(v) == "git tag"]
        step = max(1, len(tagged) // args.check_wheels)
        for version in tagged[::step][: args.check_wheels]:
            wheel = rules_of(source_from_wheel(version))
            status = "same" if wheel == per_release[version] else "DIFFERENT"
            print(f"check {version}: tag vs wheel: {status}", file=sys.stderr)
            per_release[version] = wheel
    if args.only:
        print(json.dumps(per_release, indent=1))
        return
    table = compact(per_release)
    table["generated_by"] = "scripts/release_kwargs.py"
    text = json.dumps(table, separators=(",", ":"), sort_keys=True)
    # one fact per line, readable in a diff
    text = re.sub(r'("[A-Za-z_0-9]+":\[\[)', r"\n\1", text)
    OUT.write_text(text + "\n")
    print(f"{OUT}: {len(per_release)} releases, {len(table['ranges'])} ranges of identical parsing")


if __name__ == "__main__":
    main()
