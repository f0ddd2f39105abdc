"""Talking-heads projections moved into the attention's `Attend` module: `1.pre_softmax_talking_heads` -> `1.attend.pre_softmax_talking_heads` (and post).

x-transformers 1.12.2 (attention math factored into `Attend`). Pure rename, exact in both directions.
Released upstream in x-transformers 1.12.2, commit 59cb4992d4f2 (lucidrains/x-transformers).
"""

from xtf_core.chain import Rename

from ._xt import stacks

revision = "x-transformers==1.12.2"
down_revision = "x-transformers==1.0.4"
reversible = True


def ops(spec: dict) -> list:
    return [
        Rename(
            f"{s.layers}layers.*.1.{w}{which}_softmax_talking_heads.weight",
            f"{s.layers}layers.*.1.{w}attend.{which}_softmax_talking_heads.weight",
        )
        for s in stacks(spec)
        if any(s.get(f"{p}{t}_talking_heads") for p in ("attn_", "cross_attn_") for t in ("pre", "post"))
        for kind in ("a", "c")
        for w in s.wrapped(kind)
        for which in ("pre", "post")
    ]
