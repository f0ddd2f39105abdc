"""Feed-forward output projection moved from `ff.3` to `ff.2`.

x-transformers 1.18.0. Pure rename, exact in both directions.
Released upstream in x-transformers 1.18.0, commit bba19595fcd2 (lucidrains/x-transformers).
"""

from xtf_core.chain import Rename

from ._xt import stacks

revision = "x-transformers==1.18.0"
down_revision = "x-transformers==1.15.0"
reversible = True


def ops(spec: dict) -> list:
    return [Rename(f"{s.layers}layers.*.1.ff.3.*", f"{s.layers}layers.*.1.ff.2.*") for s in stacks(spec)]
