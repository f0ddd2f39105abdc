"""`norm_add_unit_offset` became the default (norms compute `x * (gain + 1)`); older files pin it to False.

x-transformers 1.31.3 (1.31.2 is broken); the option exists since 1.31.0. Spec only, exact both ways.
Released upstream in x-transformers 1.31.3, commit 2e74ed07f7a5 (lucidrains/x-transformers).
"""

from ._xt import stacks

revision = "x-transformers==1.31.3"
down_revision = "x-transformers==1.31.0"
reversible = True
ops: list = []


def upgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.get("norm_add_unit_offset") is None:
            stack.set("norm_add_unit_offset", False)
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.get("norm_add_unit_offset") is False:
            stack.pop("norm_add_unit_offset")
        else:
            stack.set("norm_add_unit_offset", True)
    return spec
