"""LayerNorm became bias-less (`weight`/`bias` -> `gamma`/`beta`); `to_logits` and CTW projections lost their biases.

x-transformers 1.27.0. The old biases are kept, not dropped: the spec says so (`xtf_norm_bias`,
`xtf_logits_bias`, `xtf_project_bias`), so converted checkpoints compute exactly what they did.
Going down, a model without those biases gets zero biases (the same function).
Released upstream in x-transformers 1.27.0, commit 791685945852 (lucidrains/x-transformers).
`ff_post_act_ln` (0.20.2 on) lost its norm's bias too; the core has no biased post-activation norm, so such
a model is refused across this step in both directions.
"""

from xtf_core.chain import Add, Rename
from xtf_core.errors import MigrationError

from ._xt import Stack, layernorms, stacks

revision = "x-transformers==1.27.0"
down_revision = "x-transformers==1.20.0"
reversible = True


def _wrapper_biases(stack: Stack) -> tuple[str | None, list[tuple[str, int]]]:
    """(spec flag, [(tensor name, length)]) of the wrapper biases that 1.27.0 removed."""
    if stack.wrapper is None:
        return None, []
    if stack.wrapper_class == "ContinuousTransformerWrapper":
        sites = []
        if stack.wrapper_get("dim_in") is not None:
            sites.append((f"{stack.wrapper}project_in.bias", stack.dim))
        if stack.wrapper_get("dim_out") is not None:
            sites.append((f"{stack.wrapper}project_out.bias", stack.wrapper_get("dim_out")))
        return "xtf_project_bias", sites
    if stack.wrapper_get("tie_embedding"):
        return None, []
    width = stack.wrapper_get("logits_dim") or stack.wrapper_get("num_tokens")
    return "xtf_logits_bias", [(f"{stack.wrapper}to_logits.bias", width)]


def ops(spec: dict) -> list:
    found = []
    for prefix in layernorms(spec):
        found += [Rename(prefix + "weight", prefix + "gamma"), Rename(prefix + "bias", prefix + "beta")]
    return found


def _refuse_post_act_ln(spec: dict) -> None:
    if any(stack.get("ff_post_act_ln") for stack in stacks(spec)):
        raise MigrationError(
            "option 'ff_post_act_ln': before x-transformers 1.27.0 its LayerNorm had a bias, which xtf does not "
            "model; only checkpoints from 1.27.0 on convert, and they export to 1.27.0 or later"
        )


def upgrade_spec(spec: dict) -> dict:
    _refuse_post_act_ln(spec)
    for stack in stacks(spec):
        if any(kind == "layernorm" for _, kind in stack.norm_modules()):
            stack.set("xtf_norm_bias", True)
        if stack.wrapper is not None and stack.wrapper_get("post_emb_norm"):
            stack.wrapper_set("xtf_norm_bias", True)
        flag, sites = _wrapper_biases(stack)
        if sites:
            stack.wrapper_set(flag, True)
    return spec


def backfill(spec: dict) -> list:
    """Zero biases for a model that has none (trained after 1.27.0): the same function, the old layout."""
    found = []
    for stack in stacks(spec):
        flag, sites = _wrapper_biases(stack)
        if sites and not stack.wrapper_get(flag):
            found += [Add(name, (width,), f"like:{name.removesuffix('bias')}weight") for name, width in sites]
    return found


def downgrade_spec(spec: dict) -> dict:
    _refuse_post_act_ln(spec)
    for stack in stacks(spec):
        stack.pop("xtf_norm_bias")
        if stack.wrapper is not None:
            for key in ("xtf_norm_bias", "xtf_logits_bias", "xtf_project_bias"):
                stack.wrapper_pop(key)
    return spec
