"""Rotary embeddings stopped rotating the values; older checkpoints keep doing so (`xtf_rotary_values`).

x-transformers 1.20.0 (`rotary_embed_values` removed; 0.15.0-1.19.1 rotated values too). Spec only.
"""

from xtf_core.errors import MigrationError

from ._xt import stacks

revision = "x-transformers==1.20.0"
down_revision = "x-transformers==1.18.0"
reversible = True
ops: list = []


def upgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.rotary:
            stack.set("xtf_rotary_values", True)
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.rotary and not stack.pop("xtf_rotary_values"):
            raise MigrationError(
                "x-transformers 0.15.0-1.19.1 rotate the values with rotary embeddings; this model does not, "
                "so those releases cannot express it"
            )
    return spec
