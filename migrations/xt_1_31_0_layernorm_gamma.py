"""LayerNorm is x-transformers' own module again (`weight` -> `gamma`), and `norm_add_unit_offset` appears.

x-transformers 1.31.0. Renames, exact both ways. Going down past 1.31.0, a model that uses the unit
offset (stored gain = scale - 1) gets its gains stored as scales (`gain + 1`), since older releases lack
the option.
Released upstream in x-transformers 1.31.0, commit f933207ab467 (lucidrains/x-transformers).
"""

from xtf_core.chain import Rename, ValueTransform

from ._xt import layernorms, stacks

revision = "x-transformers==1.31.0"
down_revision = "x-transformers==1.30.1"
reversible = True


def ops(spec: dict) -> list:
    return [Rename(prefix + "weight", prefix + "gamma") for prefix in layernorms(spec)]


def backfill(spec: dict) -> list:
    """Runs after the reverse renames, so LayerNorm gains are named `weight` again here."""
    found = []
    for stack in stacks(spec):
        if not stack.get("norm_add_unit_offset"):
            continue
        for prefix, kind in stack.norm_modules():
            name = prefix + ("weight" if kind == "layernorm" else "g")
            found.append(ValueTransform(name, lambda t: t + 1, lambda t: t - 1, True, "gain + 1"))
    return found


def downgrade_spec(spec: dict) -> dict:
    for stack in stacks(spec):
        stack.pop("norm_add_unit_offset")
    return spec
