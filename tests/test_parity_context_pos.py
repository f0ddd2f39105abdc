"""`context_pos=`: rotary positions for the context, so cross-attention rotates queries and keys (as 2.31.10)."""

from __future__ import annotations

import pytest
import torch
from parity_configs import assert_close, paired

from xtf_core.errors import UnsupportedOptionError


def _stack(cls: str, **options: object) -> dict:
    return {
        "class": cls,
        "dim": 16,
        "depth": 2,
        "heads": 2,
        "attn_dim_head": 8,
        "rotary_pos_emb": True,
        "cross_attend": True,
        "cross_attn_dim_context": 12,
        **options,
    }


@pytest.mark.parametrize(
    "spec",
    [
        _stack("Encoder"),
        _stack("Decoder"),
        _stack("Decoder", rotary_xpos=True),
        _stack("Encoder", rotary_emb_dim=4),
    ],
    ids=["encoder", "decoder", "xpos", "partial"],
)
@pytest.mark.parametrize("custom_pos", [False, True])
def test_context_positions_match_2_31_10(spec: dict, custom_pos: bool) -> None:
    ref, ours = paired(spec)
    gen = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 6, 16, generator=gen), torch.randn(2, 9, 12, generator=gen)
    context_mask = torch.rand(2, 9, generator=gen) > 0.3
    context_mask[:, 0] = True
    kwargs = {"context": context, "context_mask": context_mask, "context_pos": torch.arange(9) * 2}
    if custom_pos:
        kwargs["pos"] = torch.arange(6) + 3
    with torch.no_grad():
        assert_close(ref(x, **kwargs), ours(x, **kwargs), "with context_pos")
        without = {k: v for k, v in kwargs.items() if k != "context_pos"}
        assert_close(ref(x, **without), ours(x, **without), "without context_pos")
        assert not torch.allclose(ours(x, **kwargs), ours(x, **without), atol=1e-4)


def test_context_positions_with_the_kv_cache_are_refused_by_name() -> None:
    import xtf_core

    model = xtf_core.TransformerWrapper(
        num_tokens=16,
        max_seq_len=16,
        attn_layers=xtf_core.Decoder(**{k: v for k, v in _stack("Decoder").items() if k != "class"}),
    ).eval()
    prompt, context = torch.randint(0, 16, (1, 3)), torch.randn(1, 5, 12)
    with torch.no_grad():
        _, cache = model(prompt, context=context, return_intermediates=True)
        with pytest.raises(UnsupportedOptionError, match="'context_pos'"):
            model(prompt, context=context, context_pos=torch.arange(5), cache=cache)
