"""The value-gate projection lost its bias (`to_v_gate.bias`); older files keep it (`xtf_gate_values_bias`).

x-transformers 2.26.0. Spec only going up; going down, a model without it gets zero biases.
Released upstream in x-transformers 2.26.0, commit d0d3ecc74b0d (lucidrains/x-transformers).
"""

from xtf_core.chain import Add

from ._xt import stacks

revision = "x-transformers==2.26.0"
down_revision = "x-transformers==2.25.5"
reversible = True
ops: list = []


def upgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.get("attn_gate_values"):
            stack.set("xtf_gate_values_bias", True)
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        stack.pop("xtf_gate_values_bias")
    return spec


def backfill(spec: dict) -> list:
    found = []
    for stack in stacks(spec):
        if not stack.get("attn_gate_values") or stack.get("xtf_gate_values_bias"):
            continue
        width = stack.dim_head * stack.get("heads", 8)
        for index, layer_type in enumerate(stack.layer_types):
            if layer_type == "a":
                name = f"{stack.branch(index)}to_v_gate.bias"
                found.append(Add(name, (width,), f"like:{name.removesuffix('bias')}weight"))
    return found
