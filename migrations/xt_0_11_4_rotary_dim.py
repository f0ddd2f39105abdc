"""The rotary dimension became `max(rotary_emb_dim or dim_head // 2, 32)` (the whole head before); older files pin it.

x-transformers 0.11.4 (0.10.0-0.11.2 rotate all `dim_head` features). Spec only (`rotary_emb_dim = dim_head`),
exact both ways; a head narrower than 32 cannot pass 0.11.4-1.42.17 (their floor of 32) and is refused.
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
        if stack.dim_head < 32:
            raise MigrationError(
                f"rotary embeddings over a head of {stack.dim_head} features (x-transformers before 0.11.4) "
                "cannot be carried through 0.11.4-1.42.17, which rotate at least 32 features"
            )
        stack.set("rotary_emb_dim", stack.dim_head)
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if not stack.rotary:
            continue
        if stack.rotary_dim != stack.dim_head:
            raise MigrationError(
                f"x-transformers before 0.11.4 rotates the whole head ({stack.dim_head} features); "
                f"this model rotates {stack.rotary_dim}"
            )
        stack.pop("rotary_emb_dim")
    return spec
