"""Options, classes and legacy settings added to the model core; going down refuses specs that use them.

xtf 0.2.0 (issues 10 and 11). No tensor of an xtf 0.1.0 file is renamed or reshaped and nothing it
computes changes, so going up is the identity. A file that stops at 0.1.0 is refused, naming the option,
when its spec uses an option, class or legacy setting 0.1.0 did not build (frozen in `_core_0_1_0.py`); a
route passing through to an x-transformers release is not, since that release is what builds the file.
"""

from ._core_0_1_0 import check_buildable

revision = "xtf==0.2.0"
down_revision = "xtf==0.1.0"
reversible = True

ops: list = []


def check_stop_spec(spec: dict) -> None:
    check_buildable(spec)
