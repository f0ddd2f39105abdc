"""Transformer-XL memories now go through each layer's pre-norm; older files keep them unnormed (`xtf_unnormed_mems`).

x-transformers 1.27.5 (found by bisecting releases 1.27.1-1.30.23; not in the eras map). Spec only.
Going down, a model that norms its memories is refused if it keeps memories (`max_mem_len` > 0).
Released upstream in x-transformers 1.27.5, commit 49b196e8a9da (lucidrains/x-transformers).
"""

from xtf_core.errors import MigrationError

from ._xt import stacks

revision = "x-transformers==1.27.5"
down_revision = "x-transformers==1.27.1"
reversible = True
ops: list = []


def upgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.options.pre_norm:
            stack.set("xtf_unnormed_mems", True)
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if (
            stack.options.pre_norm
            and not stack.pop("xtf_unnormed_mems")
            and stack.wrapper_get("max_mem_len", 0)
        ):
            raise MigrationError(
                "x-transformers before 1.27.5 does not pre-norm Transformer-XL memories; this model does"
            )
    return spec
