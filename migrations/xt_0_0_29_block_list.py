"""One `ModuleList` per depth became one flat list of blocks: `layers.d.j.*` -> `layers.i.*`.

x-transformers 0.0.29 (`AttentionLayers` with layer types). Encoder depth d held (attention, feed-forward)
at `d.0`, `d.1`; decoder depth d held (self-attention, cross-attention or nothing, feed-forward) at `d.0`,
`d.1`, `d.2`. Rename, exact. (0.0.9-0.0.28 fill the *kept* positions of an attention mask: masked calls
did not work there and are not reproduced.)
"""

from xtf_core.chain import Rename

from ._xt import stacks

revision = "x-transformers==0.0.29"
down_revision = "x-transformers==0.0.9"
reversible = True


def ops(spec: dict) -> list:
    found = []
    for stack in stacks(spec):
        o = stack.options
        slots = (0, 1, 2) if o.cross_attend else ((0, 2) if o.causal else (0, 1))
        for depth in range(o.depth):
            for offset, slot in enumerate(slots):
                new = depth * len(slots) + offset
                # every block is a PreNorm wrapper (`norm`, `fn`): naming them keeps the reverse unambiguous
                found += [
                    Rename(
                        f"{stack.layers}layers.{depth}.{slot}.{part}.**",
                        f"{stack.layers}layers.{new}.{part}.**",
                    )
                    for part in ("norm", "fn")
                ]
    return found
