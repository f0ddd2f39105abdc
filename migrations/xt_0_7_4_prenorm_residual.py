"""Pre-norm residual fixed: blocks add their branch to the input, not to the normed input (`xtf_normed_residual`).

x-transformers 0.7.4 (0.4.0-0.7.3: `x = norm(x); x = x + f(x)`). Spec only: 0.4.0-0.7.3 pre-norm files get
the legacy core option, files from before 0.4.0 (plain residual, marked by the 0.4.0 step) do not. Exact.
"""

from ._xt import stacks

revision = "x-transformers==0.7.4"
down_revision = "x-transformers==0.7.0"
reversible = True
ops: list = []


def upgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        plain = stack.pop("xtf_plain_residual")
        if stack.options.pre_norm and not plain:
            stack.set("xtf_normed_residual", True)
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        if stack.options.pre_norm and not stack.pop("xtf_normed_residual"):
            # a plain residual: expressible before 0.4.0 only; 0.4.0-0.7.3 exports refuse the leftover flag
            stack.set("xtf_plain_residual", True)
    return spec
