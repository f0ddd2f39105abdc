"""A plain x-transformers state dict of any era, loaded into a model built now: find its era, migrate it.

`model.load_state_dict(old_state_dict)` on an xtf model lands here when the names differ from the model's
own: the model core finds `migrate_plain_state_dict` as the plug-in of entry point group `xtf.plain_state`
(pyproject.toml) and never imports this module by name. The era is found as
`xtf convert --from x-transformers` finds it (the chain's layout at each era, compared with the dict's names
and shapes); the dict is migrated when exactly one function fits the model as it was built, and refused
otherwise, naming the candidate releases and the command that resolves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xtf_core.checkpoint.stamp import Stamp, current_stamp
from xtf_core.errors import StateDictMismatchError, XtfError, bounded

from .layout import layout_at

CONVERT_HINT = "xtf convert STATE.pt --from x-transformers=={release} --config CONFIG -o MODEL.safetensors"


class EraMismatchError(StateDictMismatchError):
    """A plain state dict's era computes what this model cannot; `needed_spec` builds the model that can."""

    def __init__(self, message: str, needed_spec: dict | None = None):
        super().__init__(message)
        self.needed_spec = needed_spec


def _eras() -> list[tuple[Stamp, str]]:
    from xtf_core.chain import default_chain

    nodes = [n for n in default_chain().nodes if n.lineage == "x-transformers"]
    return [
        (node, f"{node.version} (before {nodes[i + 1].version})" if i + 1 < len(nodes) else node.version)
        for i, node in enumerate(nodes)
    ]


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _spec_changes(spec: Any, needed: Any, where: str = "") -> list[str]:
    """`key=value` for every option the needed spec sets differently (nested keys dotted)."""
    if isinstance(spec, dict) and isinstance(needed, dict):
        changes = []
        for key in sorted(set(spec) | set(needed)):
            path = f"{where}.{key}" if where else key
            if key not in needed:
                changes.append(f"{path} removed")
            elif spec.get(key) != needed[key]:
                changes += _spec_changes(spec.get(key), needed[key], path)
        return changes
    return [f"{where}={needed!r}"]


def migrate_plain_state_dict(
    spec: dict, state: Mapping[str, Any], where: str = "state dict"
) -> dict[str, Any]:
    """The tensors of `state` (a whole-model x-transformers state dict of some era) in the current layout,
    for a model built from `spec`; raises StateDictMismatchError when no era, or several, fit."""
    from xtf_core.chain import migrate_in_memory

    found = {name: tuple(t.shape) for name, t in state.items()}
    now = current_stamp()
    fits: list[tuple[str, dict, dict]] = []
    for node, label in _eras():
        try:
            if layout_at(node, spec) != found:
                continue
            migrated, new_spec, _ = migrate_in_memory(dict(state), spec, node, now)
        except (XtfError, RuntimeError, ValueError, TypeError, KeyError, NotImplementedError):
            continue
        fits.append((label, migrated, new_spec))
    if not fits:
        own = layout_at(now, spec)
        missing = sorted(set(own) - set(found))
        unexpected = sorted(set(found) - set(own))
        first = (
            f"missing {bounded(missing[0])}"
            if missing
            else (f"unexpected {bounded(unexpected[0])}" if unexpected else "shapes differ")
        )
        raise StateDictMismatchError(
            f"{where}: its tensor names and shapes are those of no x-transformers release for this model "
            f"({first}, {len(missing)} missing, {len(unexpected)} unexpected); check how the model was built"
        )
    # eras computing the same function for this model are one candidate (the first era names it)
    functions: list[tuple[list[str], dict, dict]] = []
    for label, migrated, new_spec in fits:
        same = next((f for f in functions if f[2] == new_spec and _same(f[1], migrated)), None)
        if same is not None:
            same[0].append(label)
        else:
            functions.append(([label], migrated, new_spec))
    # the model as built computes an era's function only if migrating leaves its spec as it is
    usable = [f for f in functions if f[2] == spec]
    if len(usable) == 1:
        return usable[0][1]
    if len(functions) == 1:
        labels, _, needed = functions[0]
        needs = "; ".join(_spec_changes(spec, needed)[:4])
        raise EraMismatchError(
            f"{where}: its layout is that of x-transformers {', '.join(labels)}, whose function this model as "
            f"built cannot compute; build it with {needs} (xtf_core.build of the converted spec), or "
            f"convert the file: {CONVERT_HINT.format(release=_first_release(labels))}",
            needed_spec=needed,
        )
    releases = " or ".join(_first_release(labels) for labels, _, _ in functions)
    raise EraMismatchError(
        f"{where}: its layout fits x-transformers {', '.join(l for f in functions for l in f[0])}, which "
        f"compute differently for this model; name the release you trained with: "
        f"{CONVERT_HINT.format(release='RELEASE')} (RELEASE: {releases}, or the exact release)"
    )


def _first_release(labels: list[str]) -> str:
    return labels[0].split(" ")[0]
