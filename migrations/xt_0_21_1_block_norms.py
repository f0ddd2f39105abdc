"""Block norms moved into three slots `layers.i.0.{0,1,2}` (pre-branch, post-branch, post-main).

x-transformers 0.21.1 (0.21.0, whose pre-norm blocks lost their norm, is refused). Pre-norm: `layers.i.0.*`
-> `layers.i.0.0.*` (sandwich stacks had `0.0`/`0.1` already); post-norm: -> `layers.i.0.2.*`, and the last
block's norm, never applied since 0.4.1, is dropped. Exact.
"""

from xtf_core.chain import Drop, Rename

from ._xt import stacks

revision = "x-transformers==0.21.1"
down_revision = "x-transformers==0.20.2"
reversible = True

LEAVES = {"layernorm": ("weight", "bias"), "rmsnorm": ("g",), "scalenorm": ("g",), "simple_rmsnorm": ()}


def ops(spec: dict) -> list:
    found = []
    for stack in stacks(spec):
        o = stack.options
        if o.pre_norm and o.sandwich_norm:
            continue
        blocks = len(stack.layer_types)
        leaves = LEAVES[stack.norm_kind]
        if not o.pre_norm:
            last = f"{stack.layers}layers.{blocks - 1}.0."
            width = 1 if stack.norm_kind == "scalenorm" else stack.dim
            found += [  # first, so the dtype source still has its old name both ways
                Drop(last + leaf, unused=True, shape=(width,), dtype=f"like:{stack.layers}layers.0.0.{leaf}")
                for leaf in leaves
            ]
        slot = 0 if o.pre_norm else 2
        found += [
            Rename(f"{stack.layers}layers.*.0.{leaf}", f"{stack.layers}layers.*.0.{slot}.{leaf}")
            for leaf in leaves
        ]
    return found
