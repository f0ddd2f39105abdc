"""Feed-forward module renamed: `layers.i.1.net.*` -> `layers.i.1.ff.*`.

x-transformers 0.33.0. Pure rename, exact in both directions.
Released upstream in x-transformers 0.33.0, commit 18daa1e204a2 (lucidrains/x-transformers).
"""

from xtf_core.chain import Rename

from ._xt import stacks

revision = "x-transformers==0.33.0"
down_revision = "x-transformers==0.26.0"
reversible = True


def ops(spec: dict) -> list:
    return [
        Rename(f"{s.layers}layers.*.1.{w}net.**", f"{s.layers}layers.*.1.{w}ff.**")
        for s in stacks(spec)
        for w in s.wrapped("f")
    ]
