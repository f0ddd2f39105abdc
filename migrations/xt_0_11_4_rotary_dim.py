"""The rotary dimension became `max(rotary_emb_dim or dim_head // 2, 32)` (the whole head before); older files pin it.

x-transformers 0.11.4 (0.10.0-0.11.2 rotate all `dim_head` features). Spec only (`rotary_emb_dim = dim_head`),
exact both ways. A head narrower than 32 is below the floor of 0.11.4-1.42.17: it also gets
`xtf_rotary_dim_unfloored` (taken by the 1.42.18 step), so those releases cannot export it.
"""

from xtf_core.errors import MigrationError

from ._xt import stacks

revision = "x-transformers==0.11.4"
down_revision = "x-transformers==0.11.2"
reversible = True
ops: list = []


def upgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if not stack.rotary:
            continue
        stack.set("rotary_emb_dim", stack.dim_head)
        if stack.dim_head < 32:
            stack.set("xtf_rotary_dim_unfloored", True)
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if not stack.rotary:
            continue
        dim = stack.rotary_dim
        stack.pop("xtf_rotary_dim_unfloored")
        if dim != stack.dim_head:
            raise MigrationError(
                f"x-transformers before 0.11.4 rotates the whole head ({stack.dim_head} features); "
                f"this model rotates {dim}"
            )
        stack.pop("rotary_emb_dim")
    return spec
