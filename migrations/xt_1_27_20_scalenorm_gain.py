"""ScaleNorm reparametrised again: `normalize(x) * sqrt(dim) * g`, so `g_new = g_old / sqrt(dim)`.

x-transformers 1.27.20. Value transform, reversible.
Released upstream in x-transformers 1.27.20, commit 9665f74ff28e (lucidrains/x-transformers).
"""

from ._xt import sqrt_rescale, stacks

revision = "x-transformers==1.27.20"
down_revision = "x-transformers==1.27.5"
reversible = True


def ops(spec: dict) -> list:
    found = []
    for stack in stacks(spec):
        for prefix, kind in stack.norm_modules():
            if kind == "scalenorm":
                found.append(sqrt_rescale(prefix + "g", stack.dim, up=False, label="g"))
    return found
