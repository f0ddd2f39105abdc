"""ALiBi with explicit positions, per batch row and per head (x-transformers' `test_custom_alibi_across_heads`)."""

from __future__ import annotations

import pytest
import torch
from parity_configs import assert_close, paired


@pytest.mark.parametrize("flash", [False, True])
@pytest.mark.parametrize("pos_shape", ["n", "b n", "b h n"])
def test_alibi_with_custom_positions_matches_2_31_10(flash: bool, pos_shape: str) -> None:
    spec = {
        "class": "Decoder",
        "dim": 16,
        "depth": 2,
        "heads": 2,
        "attn_dim_head": 8,
        "alibi_pos_bias": True,
        "rel_pos_kwargs": {"slopes": [1, 0.5]},
        "attn_flash": flash,
    }
    ref, ours = paired(spec)
    x = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(0))
    pos = {
        "n": torch.tensor([0, 1, 3, 4]),
        "b n": torch.tensor([[0, 1, 2, 4], [1, 3, 5, 7]]),
        "b h n": torch.tensor([[[0, 1, 2, 4], [1, 3, 5, 7]], [[2, 3, 4, 5], [6, 8, 9, 10]]]),
    }[pos_shape]
    with torch.no_grad():
        assert_close(ref(x, pos=pos), ours(x, pos=pos), f"custom positions {pos_shape}")
