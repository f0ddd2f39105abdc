"""The T5 relative position bias got multiplied by `dim_head ** 0.5`; older tables are divided by it.

x-transformers 0.11.9 (`RelativePositionBias(scale=dim_head ** 0.5)`). Value transform, reversible.
"""

import math

from xtf_core.chain import ValueTransform

from ._xt import stacks

revision = "x-transformers==0.11.9"
down_revision = "x-transformers==0.11.4"
reversible = True


def ops(spec: dict) -> list:
    found = []
    for stack in stacks(spec):
        if not stack.get("rel_pos_bias"):
            continue
        root = math.sqrt(stack.dim_head)
        found.append(
            ValueTransform(
                f"{stack.layers}rel_pos.relative_attention_bias.weight",
                forward=lambda t, r=root: t / r,
                backward=lambda t, r=root: t * r,
                description=f"bias / sqrt({stack.dim_head})",
            )
        )
    return found
