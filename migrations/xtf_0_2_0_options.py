"""Options, classes and legacy settings added to the model core; going down refuses specs that use them.

xtf 0.2.0 (issues 10 and 11). No tensor of an xtf 0.1.0 file is renamed or reshaped and nothing it
computes changes, so going up is the identity. Going down to 0.1.0 is refused, naming the option, when the
spec uses an option, class or legacy setting 0.1.0 did not build (frozen in `_xtf_0_1_0.py`).
"""

from ._xtf_0_1_0 import check_buildable

revision = "xtf==0.2.0"
down_revision = "xtf==0.1.0"
reversible = True

ops: list = []


def downgrade_spec(spec: dict) -> dict:
    check_buildable(spec)
    return spec
