"""Tied logits are scaled by `tie_embedding_scale` (default `dim ** -0.5`); older tied files pin it to 1.

x-transformers 2.30.5. Spec only, exact. Going down, a tied model with any other scale is refused.
Released upstream in x-transformers 2.30.5 (commit not in the mirrored history).
"""

from xtf_core.errors import MigrationError

from ._xt import stacks

revision = "x-transformers==2.30.5"
down_revision = "x-transformers==2.26.0"
reversible = True
ops: list = []


def upgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        tied = stack.wrapper_class == "TransformerWrapper" and stack.wrapper_get("tie_embedding")
        if tied and stack.wrapper_get("tie_embedding_scale") is None:
            stack.wrapper_set("tie_embedding_scale", 1.0)
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.wrapper_class == "TransformerWrapper" and stack.wrapper_get("tie_embedding"):
            scale = stack.wrapper_pop("tie_embedding_scale")
            if scale != 1.0:
                raise MigrationError(
                    f"x-transformers before 2.30.5 does not scale tied logits; this model scales them by "
                    f"{scale if scale is not None else 'dim ** -0.5'}"
                )
    return spec
