"""`PreNorm(fn)` wrappers became `[norm, block]` lists: `layers.i.norm.*` -> `layers.i.0.*`, `layers.i.fn.*` -> `layers.i.1.*`.

x-transformers 0.4.0 (post-norm option; 0.4.0 itself is refused: its post-norm stacks also normed the last
block and cross-attention crashed, both fixed in 0.4.1). Rename, exact. From 0.4.0 to 0.7.3 a pre-norm block
adds its branch to the *normed* input; older files mark their plain residual (`xtf_plain_residual`, taken by
the 0.7.4 step).
"""

from xtf_core.chain import Rename
from xtf_core.errors import MigrationError

from ._xt import stacks

revision = "x-transformers==0.4.0"
down_revision = "x-transformers==0.0.29"
reversible = True


def ops(spec: dict) -> list:
    found = []
    for s in stacks(spec):
        found += [
            Rename(f"{s.layers}layers.*.norm.**", f"{s.layers}layers.*.0.**"),
            Rename(f"{s.layers}layers.*.fn.**", f"{s.layers}layers.*.1.**"),
        ]
    return found


def upgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        stack.set("xtf_plain_residual", True)
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if not stack.options.pre_norm or not stack.pop("xtf_plain_residual"):
            raise MigrationError(
                "x-transformers before 0.4.0 builds pre-norm blocks with a plain residual only; this model "
                "is post-norm or adds its branch to the normed input"
            )
    return spec
