"""Attention output projections lost their bias; older files keep it (`xtf_attn_out_bias`).

x-transformers 0.26.0 (`to_out = nn.Linear(..., bias=False)`). Spec only: the bias stays, so converted
checkpoints compute what they did; going down, a model without it gets zero biases (the same function).
"""

from xtf_core.chain import Add

from ._xt import stacks

revision = "x-transformers==0.26.0"
down_revision = "x-transformers==0.24.1"
reversible = True
ops: list = []


def upgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if any(t in "ac" for t in stack.layer_types):
            stack.set("xtf_attn_out_bias", True)
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        stack.pop("xtf_attn_out_bias")
    return spec


def backfill(spec: dict) -> list:
    """Zero output biases for a model that has none (trained after 0.26.0): the same function, the old layout."""
    found = []
    for stack in stacks(spec):
        if stack.get("xtf_attn_out_bias") or stack.get("heads", 8) == 1:  # one head: no output projection
            continue
        for index, layer_type in enumerate(stack.layer_types):
            if layer_type in "ac":
                weight = f"{stack.branch(index)}to_out.weight"
                found.append(Add(f"{stack.branch(index)}to_out.bias", (stack.dim,), f"like:{weight}"))
    return found
