"""Final norm moved from the wrapper (`norm.*`) into the attention stack.

x-transformers 1.15.0. Pre-norm: `norm.*` -> `attn_layers.final_norm.*`; post-norm: -> the last block's
post-main norm `attn_layers.layers.<last>.0.2.*`. The old wrapper norm was always a LayerNorm; for
RMSNorm/ScaleNorm stacks the spec keeps it one (`xtf_final_norm_layernorm`), so outputs are unchanged.
A bare stack had no final norm, nor a post-norm on its last block: it keeps none (`xtf_no_final_norm`).
Released upstream in x-transformers 1.15.0, commit 53629d63a89f (lucidrains/x-transformers).
"""

from xtf_core.chain import Rename
from xtf_core.errors import MigrationError

from ._xt import stacks

revision = "x-transformers==1.15.0"
down_revision = "x-transformers==1.12.2"
reversible = True


def ops(spec: dict) -> list:
    found = []
    for stack in stacks(spec):
        if stack.wrapper is None:
            continue  # nothing moves: the stack keeps ending unnormed
        if stack.options.pre_norm:
            target = f"{stack.layers}final_norm."
        else:
            target = f"{stack.layers}layers.{len(stack.layer_types) - 1}.0.2."
        for leaf in ("weight", "bias"):
            found.append(Rename(f"{stack.wrapper}norm.{leaf}", target + leaf))
    return found


def upgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.wrapper is None:
            stack.set("xtf_no_final_norm", True)
        elif stack.norm_kind in ("rmsnorm", "scalenorm"):
            stack.set("xtf_final_norm_layernorm", True)
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.wrapper is None:
            if not stack.pop("xtf_no_final_norm"):
                raise MigrationError(
                    "a bare attention stack before x-transformers 1.15.0 ends without a final norm; this one "
                    "has one, which those releases cannot express"
                )
            continue
        if stack.norm_kind in ("rmsnorm", "scalenorm") and not stack.pop("xtf_final_norm_layernorm"):
            raise MigrationError(
                "x-transformers before 1.15.0 always ends with a LayerNorm; this RMSNorm/ScaleNorm model "
                "ends with its own norm kind, which those releases cannot express"
            )
        if stack.norm_kind == "simple_rmsnorm":
            raise MigrationError("x-transformers before 1.15.0 ends with a LayerNorm, never a SimpleRMSNorm")
    return spec
