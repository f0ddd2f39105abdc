"""LayerNorm is torch's bias-less `nn.LayerNorm` again: `gamma` -> `weight`, the zero `beta` buffer dropped.

x-transformers 1.27.1 (with torch >= 2.1). Legacy biases carried by `xtf_norm_bias` stay as `beta`.
Released upstream in x-transformers 1.27.1, commit bb4d8fbf021e (lucidrains/x-transformers).
"""

from xtf_core.chain import Drop, Rename

from ._xt import layernorms, stacks

revision = "x-transformers==1.27.1"
down_revision = "x-transformers==1.27.0"
reversible = True


def _biased(spec: dict, prefix: str) -> bool:
    for stack in stacks(spec):
        if stack.wrapper is not None and prefix == f"{stack.wrapper}post_emb_norm.":
            return bool(stack.wrapper_get("xtf_norm_bias"))
        if prefix.startswith(stack.layers):
            return bool(stack.get("xtf_norm_bias"))
    return False


def _width(spec: dict, prefix: str) -> int:
    """The features a LayerNorm normalises: the embedding width for `post_emb_norm`, else the model's."""
    for stack in stacks(spec):
        if stack.wrapper is not None and prefix == f"{stack.wrapper}post_emb_norm.":
            return stack.wrapper_get("emb_dim") or stack.dim
    return stacks(spec)[0].dim


def ops(spec: dict) -> list:
    found = []
    for prefix in layernorms(spec):
        found.append(Rename(prefix + "gamma", prefix + "weight"))
        if not _biased(spec, prefix):
            found.append(Drop(prefix + "beta", 0.0, (_width(spec, prefix),), f"like:{prefix}weight"))
    return found
