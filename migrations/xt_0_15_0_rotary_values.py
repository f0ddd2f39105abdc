"""Rotary embeddings started rotating the values too; older files say they do not (`xtf_rotary_plain_values`).

x-transformers 0.15.0 (values rotated until 1.19.1, see the 1.20.0 step). Spec only, reversible.
"""

from xtf_core.errors import MigrationError

from ._xt import stacks

revision = "x-transformers==0.15.0"
down_revision = "x-transformers==0.11.9"
reversible = True
ops: list = []


def upgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.rotary:
            stack.set("xtf_rotary_plain_values", True)
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.rotary and not stack.pop("xtf_rotary_plain_values"):
            raise MigrationError(
                "x-transformers before 0.15.0 does not rotate the values with rotary embeddings; this model "
                "does, so those releases cannot express it"
            )
    return spec
