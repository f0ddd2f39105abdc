"""The chain: steps discovered from a package, validated once, ordered from their own declarations.

Nodes are stamps (layouts); each step is an edge `down_revision -> revision`. A valid chain is one line:
unique revisions, no gaps, no forks, no cycles, every step moving to a newer stamp. A file's stamp maps to
the node with the greatest version <= it in the same lineage (releases between two steps share a layout).
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType

from xtf_core.chain.step import Step
from xtf_core.checkpoint.stamp import Stamp, current_stamp
from xtf_core.errors import (
    ChainError,
    CycleError,
    DuplicateStepError,
    IrreversibleStepError,
    MissingParentError,
    MultipleHeadsError,
    VersionError,
)

DEFAULT_PACKAGE = "xtf_migrations"
PACKAGE_ENV = "XTF_MIGRATIONS_PACKAGE"
FIRST_LAYOUT = Stamp("xtf", "0.1.0")


@dataclass(frozen=True)
class Route:
    """The steps that take a file at `source` to `target`, in the order they run."""

    source: Stamp
    target: Stamp
    direction: str  # "upgrade", "downgrade" or "none"
    steps: tuple[Step, ...]

    def records(self) -> list[dict[str, str]]:
        """What each step appends to `xtf.migrations`."""
        records = []
        for step in self.steps:
            ends = (step.down_revision, step.revision)
            start, end = ends if self.direction == "upgrade" else ends[::-1]
            records.append({"id": step.id, "from": str(start), "to": str(end), "direction": self.direction})
        return records


class Chain:
    """A validated, linear sequence of steps, oldest first. `installed` is the newest stamp this process may
    read or write (default: the installed xtf release)."""

    def __init__(self, steps: Iterable[Step], installed: Stamp | str | None = None):
        self.installed = Stamp.coerce(installed) if installed is not None else current_stamp()
        self.steps: tuple[Step, ...] = tuple(_ordered(list(steps)))
        if self.steps:
            self.nodes: tuple[Stamp, ...] = (self.steps[0].down_revision,) + tuple(
                s.revision for s in self.steps
            )
        else:
            self.nodes = (FIRST_LAYOUT,)

    @classmethod
    def discover(
        cls,
        source: str | ModuleType | Sequence[ModuleType] = DEFAULT_PACKAGE,
        installed: Stamp | str | None = None,
    ) -> Chain:
        """Read every step module of a package (or a given list of modules)."""
        return cls((Step.from_module(module) for module in step_modules(source)), installed)

    @property
    def head(self) -> Stamp:
        return self.nodes[-1]

    def node_for(self, stamp: Stamp) -> Stamp:
        """The layout node a file at `stamp` is in: the greatest node <= stamp in the same lineage."""
        candidates = [node for node in self.nodes if node.lineage == stamp.lineage and node <= stamp]
        if not candidates:
            known = [str(node) for node in self.nodes if node.lineage == stamp.lineage]
            oldest = (
                f"the oldest {stamp.lineage} layout it knows is {known[0]}"
                if known
                else (f"it has no {stamp.lineage} layouts at all")
            )
            raise ChainError(
                f"no migration route from {stamp}: {oldest}; convert the checkpoint (xtf convert)"
            )
        return max(candidates)

    def route(self, source: Stamp | str, target: Stamp | str | None = None) -> Route:
        """The steps from `source` to `target` (default: the installed release), checked before any tensor
        is touched: neither end may be newer than the installed xtf, and a downgrade must be reversible."""
        installed = self.installed
        source = Stamp.coerce(source)
        target = installed if target is None else Stamp.coerce(target)
        if source > installed:
            raise VersionError(
                f"checkpoint is stamped {source}, newer than the installed xtf {installed.version}; "
                f"upgrade xtf (pip install -U xtf), or with the newer xtf migrate it down "
                f"(xtf migrate CKPT --to {installed} -o OUT)"
            )
        if target > installed:
            raise VersionError(
                f"target {target} is newer than the installed xtf {installed.version}; upgrade xtf to migrate there"
            )
        start = self.nodes.index(self.node_for(source))
        end = self.nodes.index(self.node_for(target))
        if start <= end:
            direction = "upgrade" if start < end else "none"
            return Route(source, target, direction, self.steps[start:end])
        steps = tuple(reversed(self.steps[end:start]))
        blocked = [step for step in steps if not step.reversible]
        if blocked:
            reasons = "; ".join(f"{step.id} ({step.summary}): {step.irreversible_reason}" for step in blocked)
            raise IrreversibleStepError(
                f"cannot migrate {source} down to {target}: irreversible step(s) {reasons}"
            )
        return Route(source, target, "downgrade", steps)


def step_modules(source: str | ModuleType | Sequence[ModuleType]) -> list[ModuleType]:
    """The step modules of a package (by name or module, submodules starting with `_` skipped)."""
    if isinstance(source, Sequence) and not isinstance(source, str):
        return list(source)
    package = importlib.import_module(source) if isinstance(source, str) else source
    if not hasattr(package, "__path__"):
        raise ChainError(f"{package.__name__} is not a package of migration steps")
    names = sorted(
        info.name for info in pkgutil.iter_modules(package.__path__) if not info.name.startswith("_")
    )
    return [importlib.import_module(f"{package.__name__}.{name}") for name in names]


def _ordered(steps: list[Step]) -> list[Step]:
    """Validate the steps and return them as a line, oldest first; every problem raises a typed ChainError."""
    if not steps:
        return []
    by_revision: dict[Stamp, Step] = {}
    for step in steps:
        if step.revision in by_revision:
            modules = [str(s.module or s.summary) for s in steps if s.revision == step.revision]
            raise DuplicateStepError(str(step.revision), modules)
        by_revision[step.revision] = step
    children: dict[Stamp, list[Step]] = {}
    for step in steps:
        children.setdefault(step.down_revision, []).append(step)
    for parent, kids in children.items():
        if len(kids) > 1:
            raise MultipleHeadsError(str(parent), [s.id for s in kids])
    roots = sorted({s.down_revision for s in steps if s.down_revision not in by_revision})
    for orphan in roots[1:]:
        step = children[orphan][0]
        raise MissingParentError(step.id, str(orphan), step.module)
    ordered, node = [], roots[0] if roots else None
    while node in children:
        step = children[node][0]
        ordered.append(step)
        node = step.revision
    if len(ordered) < len(steps):
        looping = sorted(str(s.revision) for s in steps if s not in ordered)
        raise CycleError(looping)
    for step in ordered:
        if not step.down_revision < step.revision:
            raise ChainError(
                f"step {step.id} ({step.module or step.summary}) goes from {step.down_revision} to an older "
                "or equal stamp; a step's revision must be newer than its down_revision"
            )
    return ordered


@functools.lru_cache(maxsize=8)
def _chain_for(package: str) -> Chain:
    return Chain.discover(package)


def default_chain() -> Chain:
    """The installed chain (package `xtf_migrations`; the XTF_MIGRATIONS_PACKAGE variable names another,
    for tests and benchmarks), discovered and validated once per process."""
    return _chain_for(os.environ.get(PACKAGE_ENV) or DEFAULT_PACKAGE)


def route(source: Stamp | str, target: Stamp | str | None = None) -> Route:
    """The planned steps from `source` to `target` (default: the installed release) on the installed chain."""
    return default_chain().route(source, target)
