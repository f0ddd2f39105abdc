"""Rotary embeddings stopped rotating the values; older checkpoints keep doing so (`xtf_rotary_values`).

x-transformers 1.20.0 (`rotary_embed_values` removed; 0.15.0-1.19.1 rotated values too). Spec only.
Released upstream in x-transformers 1.20.0, commit a475d87c8efc (lucidrains/x-transformers).
"""

from ._xt import stacks

revision = "x-transformers==1.20.0"
down_revision = "x-transformers==1.18.0"
reversible = True
ops: list = []


def upgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.rotary and not stack.pop("xtf_rotary_plain_values"):  # set for files before 0.15.0
            stack.set("xtf_rotary_values", True)
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.rotary and not stack.pop("xtf_rotary_values"):
            # plain values: releases before 0.15.0 (the 0.15.0 step takes the flag); 0.15.0-1.19.1 cannot
            # express it, and exporting to them is refused while the flag is left over
            stack.set("xtf_rotary_plain_values", True)
    return spec
