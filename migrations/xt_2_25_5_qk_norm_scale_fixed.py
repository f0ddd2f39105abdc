"""qk-norm bug fixed: logits scale by `qk_norm_scale` once again; files from 2.17.1-2.25.4 get it cubed.

x-transformers 2.25.5. Spec only, exact.
Released upstream in x-transformers 2.25.5, commit 90a7454b64d5 (lucidrains/x-transformers).
"""

from ._xt import stacks

revision = "x-transformers==2.25.5"
down_revision = "x-transformers==2.17.1"
reversible = True
ops: list = []


def upgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.get("attn_qk_norm") and not stack.pop("xtf_qk_norm_uncubed"):
            scale = stack.get("attn_qk_norm_scale", 10)
            stack.set("attn_qk_norm_scale", scale**3)
    return spec


def downgrade_spec(spec: dict) -> dict:
    """Store the cube root where the old releases can use it (to 1e-12); otherwise mark the file uncubed."""
    for stack in stacks(spec):
        if not stack.get("attn_qk_norm"):
            continue
        scale = stack.get("attn_qk_norm_scale", 10)
        root = round(scale ** (1 / 3), 12)
        if abs(root**3 - scale) <= 1e-12 * abs(scale):
            stack.set("attn_qk_norm_scale", root)
        else:
            stack.set("xtf_qk_norm_uncubed", True)
    return spec
