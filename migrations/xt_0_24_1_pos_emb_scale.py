"""The position-embedding scale `dim ** -0.5` came back after 0.24.0; tables are multiplied by `sqrt(dim)` again.

x-transformers 0.24.1 (fixed `l2norm` -> `l2norm_embed`). Value transform, exact both ways.
"""

from ._pos_emb import rescale

revision = "x-transformers==0.24.1"
down_revision = "x-transformers==0.24.0"
reversible = True


def ops(spec: dict) -> list:
    return rescale(spec, True, "position table")
