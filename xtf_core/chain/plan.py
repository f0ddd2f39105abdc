"""Plan a migration before touching a tensor: the spec at every step, the ops, and per tensor what happens.

`plan_steps` turns a route into concrete ops (checking every reverse before any data is read), and
`plan_route` pairs them with their route: the one plan `load` hands to `migrate_in_memory`. `plan_file`
runs those ops over the lazy tensors of a checkpoint's headers, so a dry run, the progress bar and the real
run share one plan: which tensors are kept, renamed, reshaped, added, dropped or transformed, and how many
bytes each one costs to write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from xtf_core.chain.graph import Chain, Route, default_chain
from xtf_core.chain.ops import Op
from xtf_core.chain.step import Step
from xtf_core.chain.tensors import (
    Computed,
    DroppedTensor,
    Filled,
    StoredBytes,
    TensorNode,
    Workspace,
    origin_shard,
)
from xtf_core.checkpoint.header import CheckpointHeaders
from xtf_core.checkpoint.source import OpenedCheckpoint, open_checkpoint
from xtf_core.checkpoint.stamp import Stamp, read_checkpoint_stamp, stamped_metadata
from xtf_core.errors import MigrationError

MAX_LISTED_TENSORS = 40


@dataclass(frozen=True)
class PlannedStep:
    """A step with its ops made concrete for the spec it runs on."""

    step: Step
    direction: str
    ops: tuple[Op, ...]
    spec_before: dict
    spec_after: dict


def plan_steps(route: Route, spec: dict) -> list[PlannedStep]:
    """Concrete ops and specs for every step of `route`; raises before any tensor is read if one cannot run."""
    planned = []
    for step in route.steps:
        if route.direction == "upgrade":
            ops, after = step.upgrade_ops(spec), step.apply_upgrade_spec(spec)
        else:
            after = step.apply_downgrade_spec(spec)
            ops = step.downgrade_ops(after, spec)
        planned.append(PlannedStep(step, route.direction, tuple(ops), spec, after))
        spec = after
    if route.direction == "downgrade" and route.steps and route.steps[-1].check_stop_spec is not None:
        # the file stops at this step's older layout: that release must be able to build the spec
        route.steps[-1].check_stop_spec(dict(spec))
    return planned


@dataclass(frozen=True)
class RoutePlan:
    """A route with its steps made concrete for a spec: computed once, then handed to whatever runs it
    (`migrate_in_memory(plan=...)` for `load`, `plan_file` and `migrate_file(plan=...)` for files)."""

    route: Route
    steps: list[PlannedStep]
    spec: dict

    @property
    def spec_after(self) -> dict:
        return self.steps[-1].spec_after if self.steps else dict(self.spec)


def plan_route(
    source: Stamp | str, spec: dict, target: Stamp | str | None = None, chain: Chain | None = None
) -> RoutePlan:
    """Route `source` -> `target` (default: installed) and make every step concrete for `spec`; raises
    (newer stamp, irreversible step, a step that cannot run on this spec) before any tensor is read."""
    route = (chain or default_chain()).route(source, target)
    return RoutePlan(route, plan_steps(route, spec), spec)


def run_steps(planned: list[PlannedStep], ws: Workspace) -> None:
    for planned_step in planned:
        ws.step = planned_step.step.id
        for op in planned_step.ops:
            op.apply(ws)


def rename_tied(tied: dict[str, str], planned: list[PlannedStep]) -> dict[str, str]:
    """Carry `xtf.tied` names through every rename of the route."""
    for planned_step in planned:
        for op in planned_step.ops:
            tied = {op.rename(key) or key: op.rename(value) or value for key, value in tied.items()}
    return tied


@dataclass(frozen=True)
class TensorAction:
    """What happens to one tensor: `action` is kept/renamed/reshaped/added/dropped/transformed, `copy` is how
    its bytes are produced (raw: copied undecoded; decode: computed; fill: a constant; none: not written)."""

    name: str
    action: str
    sources: tuple[str, ...]
    copy: str
    nbytes: int
    shard: str | None

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "action": self.action,
            "sources": list(self.sources),
            "copy": self.copy,
            "bytes": self.nbytes,
            "shard": self.shard,
        }


@dataclass
class FilePlan:
    """Everything `migrate_file` will do, computed from the headers alone. `source` is the opened
    checkpoint it was planned from (so running the plan opens nothing again)."""

    headers: CheckpointHeaders
    route: Route
    steps: list[PlannedStep]
    spec: dict
    metadata: dict[str, str]
    outputs: dict[str, dict[str, TensorNode]]
    drops: list[DroppedTensor]
    actions: list[TensorAction] = field(default_factory=list)
    source: OpenedCheckpoint | None = None

    @property
    def output_bytes(self) -> int:
        return sum(node.nbytes for tensors in self.outputs.values() for node in tensors.values())

    def bytes_by_copy(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for action in self.actions:
            totals[action.copy] = totals.get(action.copy, 0) + action.nbytes
        return totals

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for action in self.actions:
            counts[action.action] = counts.get(action.action, 0) + 1
        return counts

    def to_json(self) -> dict:
        return {
            "source": str(self.headers.path),
            "from": str(self.route.source),
            "to": str(self.route.target),
            "direction": self.route.direction,
            "steps": self.route.records(),
            "spec": self.spec,
            "counts": self.counts(),
            "bytes": self.bytes_by_copy(),
            "tensors": [action.to_json() for action in self.actions],
        }

    def describe(self) -> list[str]:
        """Human-readable plan, one line per step then one per tensor that changes."""
        lines = [f"{self.headers.path}: {self.route.source} -> {self.route.target} ({self.route.direction})"]
        for record, planned in zip(self.route.records(), self.steps):
            lines.append(f"  step {record['from']} -> {record['to']}  {planned.step.summary}")
        if not self.steps:
            lines.append("  no layout steps; only the stamp changes")
        counts = ", ".join(f"{count} {action}" for action, count in sorted(self.counts().items()))
        by_copy = sorted(self.bytes_by_copy().items())
        sizes = ", ".join(f"{_mib(nbytes)} {copy}" for copy, nbytes in by_copy if copy != "none")
        lines.append(f"  tensors: {counts}; bytes: {sizes}")
        changed = [action for action in self.actions if action.action != "kept"]
        for action in changed[:MAX_LISTED_TENSORS]:
            moved = action.sources and action.sources != (action.name,)
            source = f" <- {', '.join(action.sources)}" if moved else ""
            lines.append(
                f"    {action.action:<11} {action.name}{source}  ({action.copy}, {_mib(action.nbytes)})"
            )
        if len(changed) > MAX_LISTED_TENSORS:
            lines.append(f"    ... and {len(changed) - MAX_LISTED_TENSORS} more (--json lists every tensor)")
        return lines


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def checkpoint_stamp(headers: CheckpointHeaders) -> tuple[Stamp, dict]:
    """The stamp and spec of a checkpoint, through the one shared reader (shards must agree)."""
    return read_checkpoint_stamp(headers)


def plan_file(
    path: str | os.PathLike | OpenedCheckpoint, target: Stamp | str | None = None, chain: Chain | None = None
) -> FilePlan:
    """open (unless given an opened checkpoint) -> stamp -> route -> run the ops over the header's lazy
    tensors; reads no tensor data."""
    opened = open_checkpoint(path)
    headers = opened.headers
    route_plan = plan_route(opened.stamp, opened.spec, target, chain)
    route, planned, spec = route_plan.route, route_plan.steps, route_plan.spec
    ws = Workspace(
        {
            entry.name: StoredBytes(
                entry.dtype, entry.shape, shard, headers.shards[shard].file_offset(entry), entry.name
            )
            for shard, entry in headers.entries()
        }
    )
    run_steps(planned, ws)
    tied = rename_tied(opened.tied, planned)
    missing_tied = sorted(kept for kept in tied.values() if kept not in ws.tensors)
    if missing_tied:
        raise MigrationError(
            f"{headers.path}: tied tensors {missing_tied} are not in the migrated checkpoint"
        )
    new_spec = planned[-1].spec_after if planned else spec
    metadata = stamped_metadata(headers.metadata, route.target, new_spec, route.records(), tied=tied)
    outputs = _assign_shards(headers, ws.tensors)
    plan = FilePlan(headers, route, planned, new_spec, metadata, outputs, ws.drops, source=opened)
    plan.actions = _actions(headers, outputs, ws.drops)
    return plan


def _assign_shards(
    headers: CheckpointHeaders, tensors: dict[str, TensorNode]
) -> dict[str, dict[str, TensorNode]]:
    """Each output tensor goes to the shard its bytes come from; new tensors join the shard before them."""
    outputs: dict[str, dict[str, TensorNode]] = {name: {} for name in headers.shards}
    current = next(iter(headers.shards))
    for name, node in tensors.items():
        current = origin_shard(node) or current
        outputs[current][name] = node
    return outputs


def _actions(
    headers: CheckpointHeaders, outputs: dict[str, dict[str, TensorNode]], drops: list[DroppedTensor]
) -> list[TensorAction]:
    actions = []
    for shard, tensors in outputs.items():
        for name, node in tensors.items():
            if isinstance(node, StoredBytes):
                entry = headers.shards[node.source].tensors[node.origin]
                whole = (
                    node.offset == headers.shards[node.source].file_offset(entry)
                    and node.nbytes == entry.nbytes
                )
                if not whole:
                    action = "transformed"
                elif node.shape != entry.shape:
                    action = "reshaped"
                else:
                    action = "kept" if name == node.origin else "renamed"
                actions.append(TensorAction(name, action, (node.origin,), "raw", node.nbytes, shard))
            elif isinstance(node, Filled):
                actions.append(TensorAction(name, "added", (), "fill", node.nbytes, shard))
            else:
                sources = tuple(_origins(node))
                actions.append(TensorAction(name, "transformed", sources, "decode", node.nbytes, shard))
    for dropped in drops:
        sources = tuple(_origins(dropped.node))
        actions.append(TensorAction(dropped.name, "dropped", sources, "none", 0, None))
    return actions


def _origins(node: TensorNode) -> list[str]:
    if isinstance(node, StoredBytes):
        return [node.origin]
    if isinstance(node, Computed):
        return [origin for item in node.inputs for origin in _origins(item)]
    return []
