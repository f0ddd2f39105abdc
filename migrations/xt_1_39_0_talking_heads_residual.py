"""Pre-softmax talking heads became a residual mix (`sim + conv(sim)`, identity-initialised): stored weight - I.

x-transformers 1.39.0 (`attn_talking_heads` split into `attn_pre_talking_heads` / `attn_post_talking_heads`;
the pre-softmax projection is added to the logits instead of replacing them). The same function needs
`W_new = W_old - I`; going down adds the identity back. The post-softmax projection is unchanged.
Released upstream in x-transformers 1.39.0, commit 9b6ab070064c (lucidrains/x-transformers).
"""

from xtf_core.chain import ValueTransform

from ._xt import stacks

revision = "x-transformers==1.39.0"
down_revision = "x-transformers==1.35.2"
reversible = True


def _shift(sign: float):
    def transform(t):
        eye = sign * _identity(t)
        return (t.float() + eye).to(t.dtype)

    return transform


def _identity(t):
    """The identity of a [heads, heads, 1, 1] 1x1-convolution weight, in float32."""
    eye = t.float().clone().zero_()
    eye[range(t.shape[0]), range(t.shape[0])] = 1.0
    return eye


def ops(spec: dict) -> list:
    found = []
    for stack in stacks(spec):
        if not (stack.get("attn_pre_talking_heads") or stack.get("cross_attn_pre_talking_heads")):
            continue  # (the block order is read only for stacks this step touches)
        for index, layer_type in enumerate(stack.layer_types):
            prefix = {"a": "attn_", "c": "cross_attn_"}.get(layer_type)
            if prefix is None or not stack.get(f"{prefix}pre_talking_heads"):
                continue
            found.append(
                ValueTransform(
                    f"{stack.branch(index)}attend.pre_softmax_talking_heads.weight",
                    _shift(-1.0),
                    _shift(1.0),
                    False,
                    "pre-softmax talking heads: replace -> add (minus identity)",
                )
            )
    return found
