"""Absolute position embeddings got scaled by `dim ** -0.5`; older tables are multiplied by `sqrt(dim)`.

x-transformers 0.17.11 (`AbsolutePositionalEmbedding.scale`). Value transform, exact both ways.
"""

from ._pos_emb import rescale

revision = "x-transformers==0.17.11"
down_revision = "x-transformers==0.15.0"
reversible = True


def ops(spec: dict) -> list:
    return rescale(spec, True, "position table")
