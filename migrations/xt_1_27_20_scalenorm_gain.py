"""ScaleNorm reparametrised again: `normalize(x) * sqrt(dim) * g`, so `g_new = g_old / sqrt(dim)`.

x-transformers 1.27.20. Value transform, reversible.
Released upstream in x-transformers 1.27.20, commit 9665f74ff28e (lucidrains/x-transformers).
"""

import math

from xtf_core.chain import ValueTransform

from ._xt import stacks

revision = "x-transformers==1.27.20"
down_revision = "x-transformers==1.27.5"
reversible = True


def ops(spec: dict) -> list:
    found = []
    for stack in stacks(spec):
        root = math.sqrt(stack.dim)
        for prefix, kind in stack.norm_modules():
            if kind == "scalenorm":
                found.append(
                    ValueTransform(
                        prefix + "g",
                        forward=lambda t, r=root: t / r,
                        backward=lambda t, r=root: t * r,
                        description=f"g / sqrt({stack.dim})",
                    )
                )
    return found
