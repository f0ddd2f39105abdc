"""The absolute position embedding tables of a spec, for the steps that rescale them (no torch)."""

from __future__ import annotations

from ._xt import sqrt_rescale, stacks


def rescale(spec: dict, up: bool, what: str) -> list:
    """Multiply (`up`) or divide every absolute position table by sqrt(its width).

    The pattern has a wildcard, so a model without absolute positions (rotary, relative bias,
    `use_abs_pos_emb=False`) matches nothing and is left alone.
    """
    found = []
    for stack in stacks(spec):
        if stack.wrapper is None:
            continue
        width = stack.wrapper_get("emb_dim") or stack.dim
        found.append(sqrt_rescale(f"{stack.wrapper}pos_emb.*.weight", width, up, f"{what}:"))
    return found
