"""ScaleNorm started dividing by `|x| * dim ** -0.5` (was `|x|`); older gains are divided by `sqrt(dim)`.

x-transformers 0.9.0 (`ScaleNorm.scale`). Value transform, exact both ways.
"""

import math

from xtf_core.chain import ValueTransform

from ._xt import stacks

revision = "x-transformers==0.9.0"
down_revision = "x-transformers==0.7.4"
reversible = True


def ops(spec: dict) -> list:
    found = []
    for stack in stacks(spec):
        if stack.norm_kind != "scalenorm":
            continue
        root = math.sqrt(stack.dim)
        found.append(
            ValueTransform(
                f"{stack.layers}layers.*.0.g",
                forward=lambda t, r=root: t / r,
                backward=lambda t, r=root: t * r,
                description=f"g / sqrt({stack.dim})",
            )
        )
    return found
