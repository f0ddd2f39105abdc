"""GLU feed-forwards fixed: `x * gelu(x)` -> `x * gelu(gate)`; GLU files from before are refused.

x-transformers 0.6.4. No later release (and no xtf option) computes the old `x * gelu(x)`, which ignored
the gate half of the projection, so a GLU checkpoint from 0.0.x-0.6.3 cannot be carried across. Spec check only.
"""

from xtf_core.errors import MigrationError

from ._xt import stacks

revision = "x-transformers==0.6.4"
down_revision = "x-transformers==0.5.0"
reversible = True
ops: list = []


def _refuse_glu(spec: dict, where: str) -> dict:
    for stack in stacks(spec):
        if stack.get("ff_glu"):
            raise MigrationError(
                f"ff_glu: x-transformers before 0.6.4 computed x * gelu(x) (the gate unused), {where}"
            )
    return spec


def upgrade_spec(spec: dict) -> dict:
    return _refuse_glu(spec, "which no later release computes")


def downgrade_spec(spec: dict) -> dict:
    return _refuse_glu(spec, "so this GLU model cannot be expressed there")
