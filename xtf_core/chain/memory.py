"""Migrate a state dict already in memory: what the model core's `load` calls after reading a file."""

from __future__ import annotations

from typing import Any

from xtf_core.chain.graph import Chain, default_chain
from xtf_core.chain.plan import plan_steps, run_steps
from xtf_core.chain.tensors import GivenTensor, Realiser, Workspace, check_drops
from xtf_core.checkpoint.stamp import Stamp


def migrate_in_memory(
    tensors: dict[str, Any],
    spec: dict,
    source: Stamp | str,
    target: Stamp | str | None = None,
    *,
    chain: Chain | None = None,
) -> tuple[dict[str, Any], dict, list[dict[str, str]]]:
    """Bring `tensors` and `spec` stamped `source` to `target` (default: the installed release).

    Returns (new tensors, new spec, the records to append to `xtf.migrations`). Tensors no op touches are
    returned as the same objects. The route, every reverse and every drop are checked before any result is
    computed; the inputs are not modified.
    """
    route = (chain or default_chain()).route(source, target)
    planned = plan_steps(route, spec)
    ws = Workspace({name: GivenTensor.of(tensor) for name, tensor in tensors.items()})
    run_steps(planned, ws)
    realise = Realiser()
    check_drops(ws.drops, realise)
    migrated = {name: realise(node) for name, node in ws.tensors.items()}
    new_spec = planned[-1].spec_after if planned else dict(spec)
    return migrated, new_spec, route.records()
