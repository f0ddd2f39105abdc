"""ScaleNorm reparametrised: gain `g` now absorbs sqrt(dim) (`g_new = g_old * sqrt(dim)`).

x-transformers 0.33.1 (before: x / (|x| * dim**-0.5) * g; after: x / |x| * g). Value transform, reversible.
Released upstream in x-transformers 0.33.1, commit 7df472070aeb (lucidrains/x-transformers).
"""

from ._xt import sqrt_rescale, stacks

revision = "x-transformers==0.33.1"
down_revision = "x-transformers==0.33.0"
reversible = True


def ops(spec: dict) -> list:
    found = []
    for stack in stacks(spec):
        if stack.norm_kind != "scalenorm":
            continue
        found.append(sqrt_rescale(f"{stack.layers}layers.*.0.*.g", stack.dim, up=True, label="g"))
    return found
