"""`learned_value_residual_mix` defaults to True: older value-residual stacks (a fixed 0.5 mix) pin it to False.

x-transformers 1.42.28 flipped the default; with `add_value_residual` every self-attention block after the
first gains `to_value_residual_mix` (a learned per-token mix). Spec only, exact both ways; going down, a
stack that relies on the new default says so explicitly (`learned_value_residual_mix: true`).
Released upstream in x-transformers 1.42.28, commit 0fd37f5dfffb (lucidrains/x-transformers).
"""

from ._xt import stacks

revision = "x-transformers==1.42.28"
down_revision = "x-transformers==1.42.18"
reversible = True
ops: list = []


def upgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.get("add_value_residual") and stack.get("learned_value_residual_mix") is None:
            stack.set("learned_value_residual_mix", False)
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.get("add_value_residual") and stack.get("learned_value_residual_mix") is None:
            stack.set("learned_value_residual_mix", True)
    return spec
