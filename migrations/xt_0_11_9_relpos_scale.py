"""The T5 relative position bias got multiplied by `dim_head ** 0.5`; older tables are divided by it.

x-transformers 0.11.9 (`RelativePositionBias(scale=dim_head ** 0.5)`). Value transform, reversible.
"""

from ._xt import sqrt_rescale, stacks

revision = "x-transformers==0.11.9"
down_revision = "x-transformers==0.11.4"
reversible = True


def ops(spec: dict) -> list:
    found = []
    for stack in stacks(spec):
        if not stack.get("rel_pos_bias"):
            continue
        table = f"{stack.layers}rel_pos.relative_attention_bias.weight"
        found.append(sqrt_rescale(table, stack.dim_head, up=False, label="bias"))
    return found
