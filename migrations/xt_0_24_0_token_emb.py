"""Token embedding wrapped in a module (`token_emb.weight` -> `token_emb.emb.weight`); 0.24.0 lost the position scale.

x-transformers 0.24.0 (`TokenEmbedding`; a typo, `l2norm` for `l2norm_embed`, set the position scale to 1 in
0.24.0 alone, fixed in 0.24.1). Rename, and position tables divided by `sqrt(dim)`; exact both ways.
"""

from xtf_core.chain import Rename

from ._pos_emb import rescale
from ._xt import stacks

revision = "x-transformers==0.24.0"
down_revision = "x-transformers==0.23.0"
reversible = True


def ops(spec: dict) -> list:
    found = [
        Rename(f"{s.wrapper}token_emb.weight", f"{s.wrapper}token_emb.emb.weight")
        for s in stacks(spec)
        if s.wrapper is not None and s.wrapper_class == "TransformerWrapper"
    ]
    return found + rescale(spec, False, "unscaled position table (0.24.0)")
