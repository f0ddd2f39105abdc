"""Rotary embeddings switched from rotating halves to rotating interleaved pairs.

x-transformers 1.30.1 (0.11.2-1.30.0 used `rotate_half`). The same function is kept by permuting, inside
every head, the rotary features of the query/key projections (and of the values and output projection
when values are rotated too): feature i of the first half -> 2i, of the second half -> 2i + 1. Exact.
Released upstream in x-transformers 1.30.1, commit 992ab09c7b3b (lucidrains/x-transformers).
"""

from xtf_core.chain import ValueTransform
from xtf_core.errors import MigrationError

from ._rotary import permutation, permute
from ._xt import stacks

revision = "x-transformers==1.30.1"
down_revision = "x-transformers==1.27.20"
reversible = True


def ops(spec: dict) -> list:
    found = []
    for stack in stacks(spec):
        if not stack.rotary:
            continue
        if stack.get("attn_qk_norm") and stack.get("attn_qk_norm_groups", 1) != 1:
            raise MigrationError(
                "rotary with attn_qk_norm_groups > 1 cannot be carried across 1.30.1 exactly"
            )
        dim_head = stack.dim_head
        rot = stack.rotary_dim
        fwd, bwd = permutation(dim_head, rot, False), permutation(dim_head, rot, True)
        # (tensor, the dim whose features are per-head rotary features) in each self-attention block
        targets = [("to_q.weight", 0), ("to_k.weight", 0)]
        if stack.get("xtf_rotary_values"):
            targets.append(("to_v.weight", 0))
            if stack.get("heads", 8) > 1:  # with one head there is no output projection
                targets.append(("to_out.weight", 1))
        if stack.get("attn_qk_norm") and stack.get("attn_qk_norm_dim_scale"):
            targets += [("qk_norm_q_scale", 2), ("qk_norm_k_scale", 2)]
        for index, layer_type in enumerate(stack.layer_types):
            if layer_type != "a":
                continue
            for name, dim in targets:
                found.append(
                    ValueTransform(
                        f"{stack.branch(index)}{name}",
                        permute(dim, dim_head, fwd),
                        permute(dim, dim_head, bwd),
                        False,
                        "interleave rotary features",
                    )
                )
    return found
