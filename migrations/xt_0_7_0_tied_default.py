"""`tie_embedding` default changed True -> False; older configs pin the tie they were built with.

x-transformers 0.7.0 (before: logits = x @ token_emb.weight.T unless `tie_embedding=False`). Spec only, exact.
"""

from ._xt import stacks

revision = "x-transformers==0.7.0"
down_revision = "x-transformers==0.6.4"
reversible = True
ops: list = []


def _token_wrappers(spec: dict) -> list:
    return [s for s in stacks(spec) if s.wrapper is not None and s.wrapper_class == "TransformerWrapper"]


def upgrade_spec(spec: dict) -> dict:
    for stack in _token_wrappers(spec):
        if stack.wrapper_get("tie_embedding") is None:
            stack.wrapper_set("tie_embedding", True)
    return spec


def downgrade_spec(spec: dict) -> dict:
    for stack in _token_wrappers(spec):
        if stack.wrapper_get("tie_embedding") is None:
            stack.wrapper_set("tie_embedding", False)
        elif stack.wrapper_get("tie_embedding") is True:
            stack.wrapper_pop("tie_embedding")
    return spec
