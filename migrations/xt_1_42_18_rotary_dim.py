"""Default rotary dimension changed from `max(dim_head // 2, 32)` to `dim_head // 2`; older files pin it.

x-transformers 1.42.18. Spec only (`rotary_emb_dim` made explicit), exact both ways.
"""

from ._xt import stacks

revision = "x-transformers==1.42.18"
down_revision = "x-transformers==1.35.2"
reversible = True
ops: list = []


def upgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.rotary and stack.get("rotary_emb_dim") is None:
            stack.set("rotary_emb_dim", max(stack.dim_head // 2, 32))
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.rotary and stack.get("rotary_emb_dim") is None:
            stack.set("rotary_emb_dim", stack.dim_head // 2)
    return spec
