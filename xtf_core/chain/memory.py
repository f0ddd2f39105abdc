"""Migrate a state dict already in memory: what the model core's `load` calls after reading a file."""

from __future__ import annotations

from typing import Any

from xtf_core.chain.graph import Chain
from xtf_core.chain.plan import FilePlan, RoutePlan, plan_route, run_steps
from xtf_core.chain.tensors import GivenTensor, Realiser, Workspace, check_drops
from xtf_core.checkpoint.stamp import Stamp
from xtf_core.errors import MigrationError


def migrate_in_memory(
    tensors: dict[str, Any],
    spec: dict | None = None,
    source: Stamp | str | None = None,
    target: Stamp | str | None = None,
    *,
    chain: Chain | None = None,
    plan: RoutePlan | FilePlan | None = None,
) -> tuple[dict[str, Any], dict, list[dict[str, str]]]:
    """Bring `tensors` and `spec` stamped `source` to `target` (default: the installed release).

    With `plan` (from `plan_route`, or a `FilePlan`), the route and its concrete steps are the ones already
    computed, and `spec`, `source`, `target` and `chain` are not needed (nothing is routed or planned
    again). Returns (new tensors, new spec, the records to append to `xtf.migrations`). Tensors no op
    touches are returned as the same objects. The route, every reverse and every drop are checked before
    any result is computed; the inputs are not modified.
    """
    if plan is None:
        if spec is None or source is None:
            raise MigrationError("migrate_in_memory needs spec and source, or a plan")
        plan = plan_route(source, spec, target, chain)
    ws = Workspace({name: GivenTensor.of(tensor) for name, tensor in tensors.items()})
    run_steps(plan.steps, ws)
    realise = Realiser()
    check_drops(ws.drops, realise)
    migrated = {name: realise(node) for name, node in ws.tensors.items()}
    new_spec = plan.steps[-1].spec_after if plan.steps else dict(spec if spec is not None else plan.spec)
    return migrated, new_spec, plan.route.records()
