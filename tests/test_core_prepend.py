"""`prepend_embeds` (with and without masks) matches x-transformers 2.31.10 on both wrappers."""

from __future__ import annotations

import pytest
import torch
import x_transformers

import xtf_core


def _pair(cls: str, **kwargs):
    torch.manual_seed(0)
    layers = {"dim": 16, "depth": 1, "heads": 2}
    ref = getattr(x_transformers, cls)(attn_layers=x_transformers.Encoder(**layers), **kwargs)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    mine = getattr(xtf_core, cls)(attn_layers=xtf_core.Encoder(**layers), **kwargs)
    mine.load_state_dict(ref.state_dict(), strict=True)
    return ref.eval(), mine.eval()


@pytest.mark.parametrize("masks", ["none", "sequence", "prepend", "both"])
@pytest.mark.parametrize("cls", ["TransformerWrapper", "ContinuousTransformerWrapper"])
def test_prepend_embeds_match_the_reference(cls: str, masks: str) -> None:
    if cls == "TransformerWrapper":
        ref, mine = _pair(cls, num_tokens=20, max_seq_len=12)
        x = torch.randint(0, 20, (2, 5))
    else:
        ref, mine = _pair(cls, dim_in=3, dim_out=4, max_seq_len=12)
        x = torch.randn(2, 5, 3)
    kwargs = {"prepend_embeds": torch.randn(2, 3, 16)}
    if masks in ("sequence", "both"):
        kwargs["mask"] = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    if masks in ("prepend", "both"):
        kwargs["prepend_mask"] = torch.tensor([[True, True, False], [True, False, False]])
    with torch.no_grad():
        torch.testing.assert_close(mine(x, **kwargs), ref(x, **kwargs), rtol=0, atol=1e-5)
