"""Rotary embeddings switched from rotating interleaved pairs to rotating halves.

x-transformers 0.11.2 (0.10.0-0.11.1 used `rotate_every_two` over the whole head, `rotate_half` after).
Kept exact by permuting, inside every head, the query/key rows: old rotary feature 2i -> i, 2i + 1 -> i + d/2
(the inverse of the 1.30.1 permutation; the rotary dimension is the whole head before 0.11.4).
"""

from xtf_core.chain import ValueTransform

from ._rotary import permutation, permute
from ._xt import stacks

revision = "x-transformers==0.11.2"
down_revision = "x-transformers==0.9.0"
reversible = True


def ops(spec: dict) -> list:
    found = []
    for stack in stacks(spec):
        if not stack.rotary:
            continue
        dim_head = stack.dim_head
        to_halves, to_pairs = permutation(dim_head, dim_head, True), permutation(dim_head, dim_head, False)
        for index, layer_type in enumerate(stack.layer_types):
            if layer_type == "a":
                found += [
                    ValueTransform(
                        f"{stack.branch(index)}{name}",
                        permute(0, dim_head, to_halves),
                        permute(0, dim_head, to_pairs),
                        False,
                        "rotary pairs -> halves",
                    )
                    for name in ("to_q.weight", "to_k.weight")
                ]
    return found
