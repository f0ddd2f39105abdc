"""ScaleNorm started dividing by `|x| * dim ** -0.5` (was `|x|`); older gains are divided by `sqrt(dim)`.

x-transformers 0.9.0 (`ScaleNorm.scale`). Value transform, exact both ways.
"""

from ._xt import sqrt_rescale, stacks

revision = "x-transformers==0.9.0"
down_revision = "x-transformers==0.7.4"
reversible = True


def ops(spec: dict) -> list:
    found = []
    for stack in stacks(spec):
        if stack.norm_kind != "scalenorm":
            continue
        found.append(sqrt_rescale(f"{stack.layers}layers.*.0.g", stack.dim, up=False, label="g"))
    return found
