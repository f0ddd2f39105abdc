"""Feed-forward output projection moved from `ff.3` to `ff.2`.

x-transformers 1.18.0 (the empty slot of `ff_post_act_ln=False` is no longer an `Identity`). Pure rename,
exact in both directions; with `ff_post_act_ln` the norm keeps slot 1 and nothing moves.
Released upstream in x-transformers 1.18.0, commit bba19595fcd2 (lucidrains/x-transformers).
"""

from xtf_core.chain import Rename

from ._xt import stacks

revision = "x-transformers==1.18.0"
down_revision = "x-transformers==1.15.0"
reversible = True


def ops(spec: dict) -> list:
    return [
        Rename(f"{s.layers}layers.*.1.{w}ff.3.*", f"{s.layers}layers.*.1.{w}ff.2.*")
        for s in stacks(spec)
        if not s.get("ff_post_act_ln")  # its norm holds slot 1: the projection stays at ff.3
        for w in s.wrapped("f")
    ]
