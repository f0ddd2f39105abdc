"""The XTransformer encoder lost its logits head (`encoder.to_logits.*`), which it never used.

x-transformers 1.35.2 (`return_only_embed=True`). Dropping an unused head changes no output; going down,
a zero head is added back.
Released upstream in x-transformers 1.35.2, commit 9d8bd8a7c515 (lucidrains/x-transformers).
"""

from xtf_core.chain import Drop

revision = "x-transformers==1.35.2"
down_revision = "x-transformers==1.31.8"
reversible = True


def ops(spec: dict) -> list:
    if spec.get("class") != "XTransformer":
        return []
    found = [
        Drop(
            "encoder.to_logits.weight",
            0.0,
            (spec["enc_num_tokens"], spec["dim"]),
            "like:encoder.token_emb.emb.weight",
            unused=True,
        )
    ]
    if spec.get("enc_xtf_logits_bias"):
        found.append(
            Drop(
                "encoder.to_logits.bias",
                0.0,
                (spec["enc_num_tokens"],),
                "like:encoder.token_emb.emb.weight",
                unused=True,
            )
        )
    return found


def upgrade_spec(spec: dict) -> dict:
    spec.pop("enc_xtf_logits_bias", None)
    return spec
