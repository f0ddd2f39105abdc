"""`use_layerscale` follows `norm_add_unit_offset`: the stored layer scale becomes `gamma - 1` when the offset is on.

x-transformers 1.31.8 (`LayerScale(unit_offset=...)`). In 1.31.3-1.31.7 the offset was on by default for the
norms but the layer scale ignored it; from 1.31.8 a stack with the offset computes `out * (gamma + 1)`. Files
from those releases keep their function with `gamma -= 1`; going down adds it back. Stacks with
`norm_add_unit_offset: false` (every file from before 1.31.3, pinned by that step) are untouched.
Released upstream in x-transformers 1.31.8, commit 65e9d36a2e96 (lucidrains/x-transformers).
"""

from xtf_core.chain import ValueTransform

from ._xt import stacks

revision = "x-transformers==1.31.8"
down_revision = "x-transformers==1.31.3"
reversible = True


def ops(spec: dict) -> list:
    found = []
    for stack in stacks(spec):
        if not stack.get("use_layerscale") or stack.get("norm_add_unit_offset") is False:
            continue
        for index in range(len(stack.layer_types)):
            found.append(
                ValueTransform(
                    f"{stack.layers}layers.{index}.1.gamma",
                    lambda t: (t.float() - 1.0).to(t.dtype),
                    lambda t: (t.float() + 1.0).to(t.dtype),
                    True,
                    "layer scale stored with the unit offset",
                )
            )
    return found
