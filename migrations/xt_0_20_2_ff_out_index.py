"""Feed-forward output projection moved from `net.2` to `net.3` (an optional post-activation norm slot).

x-transformers 0.20.2 (`post_act_ln`). Pure rename, exact in both directions; 0.20.0 is refused (it does
not construct).
"""

from xtf_core.chain import Rename

from ._xt import stacks

revision = "x-transformers==0.20.2"
down_revision = "x-transformers==0.17.11"
reversible = True


def ops(spec: dict) -> list:
    return [
        Rename(f"{s.layers}layers.*.1.{w}net.2.*", f"{s.layers}layers.*.1.{w}net.3.*")
        for s in stacks(spec)
        for w in s.wrapped("f")
    ]
