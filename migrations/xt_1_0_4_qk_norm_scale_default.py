"""`qk_norm_scale` defaults to 10 (was 1): older qk-norm stacks that did not set it pin it to 1.

x-transformers 1.0.4 changed the default of the fixed logit scale used with `qk_norm` (`attn_qk_norm`,
`cross_attn_qk_norm`); 0.31.2-1.0.3 scaled the normalised logits by 1. Spec only, exact both ways; going
down, a stack relying on the new default says so (`qk_norm_scale: 10`).
Released upstream in x-transformers 1.0.4, commit 975db2153b3d (lucidrains/x-transformers).
"""

from ._xt import stacks

revision = "x-transformers==1.0.4"
down_revision = "x-transformers==0.33.1"
reversible = True
ops: list = []

PREFIXES = ("attn_", "cross_attn_")


def upgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        for p in PREFIXES:
            if stack.get(f"{p}qk_norm") and stack.get(f"{p}qk_norm_scale") is None:
                stack.set(f"{p}qk_norm_scale", 1)
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        for p in PREFIXES:
            if not stack.get(f"{p}qk_norm"):
                continue
            if stack.get(f"{p}qk_norm_scale") is None:
                stack.set(f"{p}qk_norm_scale", 10)
            elif stack.get(f"{p}qk_norm_scale") == 1:
                stack.pop(f"{p}qk_norm_scale")
    return spec
