"""qk-norm bug: queries and keys were also multiplied by `qk_norm_scale`, so logits scale by its cube.

x-transformers 2.17.1 (fixed in 2.25.5). Files from before keep their function through this stretch by a
spec marker (`xtf_qk_norm_uncubed`) that 2.25.5 removes again. Spec only, exact.
Released upstream in x-transformers 2.17.1, commit a2c55a0b7c29 (lucidrains/x-transformers).
"""

from xtf_core.errors import MigrationError

from ._xt import stacks

revision = "x-transformers==2.17.1"
down_revision = "x-transformers==1.42.28"
reversible = True
ops: list = []


def _qk_norm_stacks(spec: dict) -> list:
    found = [s for s in stacks(spec) if s.get("attn_qk_norm")]
    for stack in found:
        if stack.get("attn_qk_norm_dim_scale"):
            raise MigrationError(
                "attn_qk_norm_dim_scale checkpoints are not supported across x-transformers 2.17-2.25"
            )
    return found


def upgrade_spec(spec: dict) -> dict:
    for stack in _qk_norm_stacks(spec):
        stack.set("xtf_qk_norm_uncubed", True)
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in _qk_norm_stacks(spec):
        if not stack.pop("xtf_qk_norm_uncubed"):
            scale = stack.get("attn_qk_norm_scale", 10)
            stack.set("attn_qk_norm_scale", scale**3)
    return spec
