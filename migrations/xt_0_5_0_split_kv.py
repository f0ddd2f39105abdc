"""Attention `to_kv` split into `to_k` and `to_v`; `pos_emb.weight` -> `pos_emb.emb.weight`.

x-transformers 0.5.0 (also: a stack with a relative position bias no longer gets absolute positions; older
files keep theirs with `disable_abs_pos_emb: false`). Split and rename, exact; going down, a model without an
absolute position table gets a zero one (the same function).
"""

from xtf_core.chain import Add, Rename, Split

from ._xt import stacks

revision = "x-transformers==0.5.0"
down_revision = "x-transformers==0.4.0"
reversible = True


def _has_positions(stack) -> bool:
    if not stack.wrapper_get("use_abs_pos_emb", stack.wrapper_get("use_pos_emb", True)):
        return False
    disabled = stack.get("disable_abs_pos_emb")
    return not (disabled if disabled is not None else stack.get("rel_pos_bias") or stack.rotary)


def ops(spec: dict) -> list:
    found = []
    for s in stacks(spec):
        found.append(
            Split(
                f"{s.layers}layers.*.1.to_kv.weight",
                (f"{s.layers}layers.*.1.to_k.weight", f"{s.layers}layers.*.1.to_v.weight"),
                dim=0,
            )
        )
        if s.wrapper is not None and s.wrapper_class == "TransformerWrapper":
            found.append(Rename(f"{s.wrapper}pos_emb.weight", f"{s.wrapper}pos_emb.emb.weight"))
    return found


def upgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.wrapper is not None and stack.get("rel_pos_bias"):
            stack.set("disable_abs_pos_emb", False)
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.get("disable_abs_pos_emb") is False:
            stack.pop("disable_abs_pos_emb")
    return spec


def backfill(spec: dict) -> list:
    """A zero position table for a model without one: releases before 0.5.0 always add positions."""
    return [
        Add(
            f"{s.wrapper}pos_emb.weight",
            (s.wrapper_get("max_seq_len"), s.wrapper_get("emb_dim") or s.dim),
            f"like:{s.wrapper}token_emb.weight",
        )
        for s in stacks(spec)
        if s.wrapper is not None and s.wrapper_class == "TransformerWrapper" and not _has_positions(s)
    ]
