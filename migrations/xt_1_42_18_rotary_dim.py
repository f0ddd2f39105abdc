"""The rotary dimension lost its floor of 32 (`max(rotary_emb_dim or dim_head // 2, 32)` before); older files pin it.

x-transformers 1.42.18. Spec only (`rotary_emb_dim` made explicit), exact both ways; going down, a rotary
dimension below 32 is kept with `xtf_rotary_dim_unfloored` (files from before 0.11.4 rotate whole narrow heads;
0.11.4-1.42.17 cannot, and exporting to them is refused while the flag is left over).
Released upstream in x-transformers 1.42.18, commit b7202457ea75 (lucidrains/x-transformers).
"""

from ._xt import stacks

revision = "x-transformers==1.42.18"
down_revision = "x-transformers==1.39.0"
reversible = True
ops: list = []


def upgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.rotary:
            stack.set("rotary_emb_dim", stack.rotary_dim)
            stack.pop("xtf_rotary_dim_unfloored")
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if not stack.rotary:
            continue
        dim = stack.get("rotary_emb_dim") or stack.dim_head // 2
        if dim < 32:
            # below the floor of 0.11.4-1.42.17: only files from before 0.11.4 rotate so few (the 0.11.4 step
            # takes the flag); exporting to 0.11.4-1.42.17 is refused while it is left over
            stack.set("rotary_emb_dim", dim)
            stack.set("xtf_rotary_dim_unfloored", True)
            continue
        if dim == max(stack.dim_head // 2, 32):
            stack.pop("rotary_emb_dim")  # the old default gives it; keep the spec as the release would
        else:
            stack.set("rotary_emb_dim", dim)
    return spec
