"""Talking heads became 1x1 convolutions: `pre_softmax_proj` [h, h] -> `pre_softmax_talking_heads.weight` [h, h, 1, 1], transposed (and post).

x-transformers 0.23.0. Up to 0.22.3 the heads were mixed by `einsum('b h i j, h k -> b k i j', dots, W)`;
a convolution's weight is indexed [out, in], so the same mix is `W.T` as a 1x1 kernel. Exact both ways.
Released upstream in x-transformers 0.23.0, commit 75d723ba1410 (lucidrains/x-transformers).
"""

from xtf_core.chain import Rename, Reshape, Transpose

from ._xt import stacks

revision = "x-transformers==0.23.0"
down_revision = "x-transformers==0.21.1"
reversible = True


def ops(spec: dict) -> list:
    found = []
    for stack in stacks(spec):
        heads = stack.get("heads", 8)
        for prefix, kind in (("attn_", "a"), ("cross_attn_", "c")):
            if not (stack.get(f"{prefix}pre_talking_heads") or stack.get(f"{prefix}post_talking_heads")):
                continue
            for index, layer_type in enumerate(stack.layer_types):
                if layer_type != kind:
                    continue
                for which in ("pre", "post"):
                    old = f"{stack.branch(index)}{which}_softmax_proj"
                    new = f"{stack.branch(index)}{which}_softmax_talking_heads.weight"
                    found += [
                        Transpose(old, 0, 1),
                        Reshape(old, (heads, heads), (heads, heads, 1, 1)),
                        Rename(old, new),
                    ]
    return found
