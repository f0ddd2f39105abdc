"""`causal=` at call time overrides a stack's causality for its self-attention, as x-transformers 2.31.10 does.

With `attn_flash=True`, 2.31.10 ignores the override (its flash path reads the stack's own causality), although
`attn_flash` otherwise only picks a kernel. xtf applies the override there too, so a flash model is compared
with the reference built without `attn_flash` (the same weights and, without the override, the same outputs).
"""

from __future__ import annotations

import pytest
import torch
from parity_configs import assert_close, paired

import xtf_core


def _tw(cls: str, **layers: object) -> dict:
    return {
        "class": "TransformerWrapper",
        "num_tokens": 32,
        "max_seq_len": 16,
        "attn_layers": {"class": cls, "dim": 16, "depth": 2, "heads": 2, "attn_dim_head": 8, **layers},
    }


@pytest.mark.parametrize(
    ("spec", "causal"),
    [
        (_tw("Decoder"), False),
        (_tw("Decoder", rotary_pos_emb=True, attn_flash=True), False),
        (_tw("Encoder"), True),
        (_tw("Encoder", alibi_pos_bias=True), True),
        (_tw("Decoder", cross_attend=True), False),
    ],
)
def test_causal_override_matches_2_31_10(spec: dict, causal: bool) -> None:
    flash = spec["attn_layers"].get("attn_flash", False)
    plain = {**spec, "attn_layers": {k: v for k, v in spec["attn_layers"].items() if k != "attn_flash"}}
    ref, ours = paired(plain)
    if flash:
        ours = xtf_core.build(spec).eval()
        ours.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 32, (2, 10), generator=gen)
    mask = torch.rand(2, 10, generator=gen) > 0.3
    mask[:, 0] = True
    kwargs: dict = {"mask": mask, "causal": causal}
    if spec["attn_layers"].get("cross_attend"):
        kwargs |= {"context": torch.randn(2, 5, 16, generator=gen)}
    with torch.no_grad():
        expected, actual = ref(tokens, **kwargs), ours(tokens, **kwargs)
        assert_close(expected, actual, f"causal={causal}")
        # the override changes the function, and only for this call
        assert not torch.allclose(actual, ours(tokens, **{**kwargs, "causal": not causal}), atol=1e-4)
