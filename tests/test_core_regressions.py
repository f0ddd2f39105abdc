"""Regression tests for four bugs reported against x-transformers, which the xtf core must not have.

(a) ContinuousTransformerWrapper with custom layer orders and memory (Transformer-XL mems, memory tokens)
    must run, return memories it can take back (tuple or list), for several segments.
(b) rotary xPos must accept positions of shape [n], [1, n] and [b, n].
(c) Encoder / Decoder must run directly on embeddings [b, n, dim], with or without a mask.
(d) cross-attention over a context whose mask is all False for some rows must give finite outputs
    (zero cross-attention output for those rows) and finite gradients, on every attention path.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from parity_configs import assert_close, paired, seeded_mask, seeded_randn

import xtf_core
from xtf_core.model.attention import Attention

DIM = 16


def _layers(cls: str = "Decoder", **kw: Any) -> dict[str, Any]:
    return {"class": cls, "dim": DIM, "depth": 2, "heads": 2, "attn_dim_head": 8, **kw}


# ---------------------------------------------------------------------------------------------- (a)

CUSTOM_ORDERS = {
    "f_first": {"custom_layers": ["f", "a", "f", "a"]},
    "ff_then_attn": {"custom_layers": ["f", "f", "a"]},
    "f_first_and_last": {"custom_layers": ["f", "a", "a", "f"]},
    "attn_first": {"custom_layers": ["a", "a", "f"]},
    "only_ff": {"custom_layers": ["f", "f"]},
    "par_ratio": {"depth": 3, "par_ratio": 4},
    "par_ratio_2": {"depth": 2, "par_ratio": 2},
}


def _continuous_spec(order: dict[str, Any], num_memory_tokens: int, cls: str = "Decoder") -> dict[str, Any]:
    return {
        "class": "ContinuousTransformerWrapper",
        "max_seq_len": 16,
        "max_mem_len": 4,
        "num_memory_tokens": num_memory_tokens,
        "attn_layers": _layers(cls, rotary_pos_emb=True, **order),
    }


@pytest.mark.parametrize("as_returned", ["tuple", "list"])
@pytest.mark.parametrize("num_memory_tokens", [0, 2])
@pytest.mark.parametrize("order", sorted(CUSTOM_ORDERS))
def test_continuous_custom_layers_with_memory(order, num_memory_tokens, as_returned):
    ref, ours = paired(_continuous_spec(CUSTOM_ORDERS[order], num_memory_tokens))
    num_attn = ours.attn_layers.layer_types.count("a")
    ref_mems = our_mems = None
    for segment, seq in enumerate((3, 5, 2)):
        x = seeded_randn(2, seq, DIM, seed=segment)
        with torch.no_grad():
            # x-transformers 2.31.10 returns a tuple it cannot take back; it needs a list
            ref_out, ref_mems = ref(
                x, mems=list(ref_mems) if ref_mems is not None else None, return_mems=True
            )
            our_out, our_mems = ours(x, mems=our_mems, return_mems=True)
        assert len(our_mems) == num_attn
        assert all(m.shape[0] == 2 and m.shape[-1] == DIM and m.shape[1] <= 4 for m in our_mems)
        assert_close(ref_out, our_out, f"segment {segment} output")
        assert_close(list(ref_mems), list(our_mems), f"segment {segment} memories")
        our_mems = tuple(our_mems) if as_returned == "tuple" else list(our_mems)


@pytest.mark.parametrize("order", sorted(CUSTOM_ORDERS))
def test_continuous_memory_matches_one_long_causal_pass(order):
    """A causal stack with relative positions and full memories computes what one pass over both segments does."""
    spec = _continuous_spec(CUSTOM_ORDERS[order], 0)
    spec["max_mem_len"] = 8
    model = xtf_core.build(spec).eval()
    first, second = seeded_randn(2, 3, DIM, seed=1), seeded_randn(2, 4, DIM, seed=2)
    with torch.no_grad():
        whole = model(torch.cat((first, second), dim=1))
        out1, mems = model(first, return_mems=True)
        out2, _ = model(second, mems=tuple(mems), return_mems=True)
    assert_close(whole, torch.cat((out1, out2), dim=1), "segmented vs whole")


def test_token_wrapper_custom_layers_with_memory_tokens_and_mems():
    spec = {
        "class": "TransformerWrapper",
        "num_tokens": 20,
        "max_seq_len": 16,
        "max_mem_len": 3,
        "num_memory_tokens": 2,
        "attn_layers": _layers(custom_layers=["f", "a", "f", "a"], rotary_pos_emb=True),
    }
    ref, ours = paired(spec)
    ref_mems = our_mems = None
    for segment in range(3):
        tokens = torch.randint(0, 20, (2, 4), generator=torch.Generator().manual_seed(segment))
        with torch.no_grad():
            ref_out, ref_mems = ref(tokens, mems=ref_mems, return_mems=True)
            our_out, our_mems = ours(tokens, mems=tuple(our_mems) if our_mems else None, return_mems=True)
        assert_close(ref_out, our_out, f"segment {segment}")
        assert_close(ref_mems, our_mems, f"segment {segment} memories")


# ---------------------------------------------------------------------------------------------- (b)


@pytest.mark.parametrize("scale_base", [16, 512])
def test_rotary_xpos_accepts_positions_of_any_batch_shape(scale_base):
    layers = xtf_core.build(_layers(rotary_pos_emb=True, rotary_xpos=True, rotary_xpos_scale_base=scale_base))
    layers.eval()
    b, n = 3, 6
    x = seeded_randn(b, n, DIM, seed=0)
    pos = torch.arange(n) + 2
    with torch.no_grad():
        flat = layers(x, pos=pos)
        with_one = layers(x, pos=pos[None])
        batched = layers(x, pos=pos.expand(b, n))
        default = layers(x)
        shifted_default = layers(x, pos=torch.arange(n))
    for name, out in (("[1, n]", with_one), ("[b, n]", batched)):
        assert out.shape == (b, n, DIM)
        assert_close(flat, out, f"positions {name} vs [n]")
    assert_close(default, shifted_default, "explicit arange vs default positions")
    # xPos and rotary depend only on relative positions, so a shift changes nothing either
    assert_close(default, flat, "shifted positions", atol=1e-4)


def test_rotary_xpos_per_row_positions_match_rows_run_alone():
    layers = xtf_core.build(_layers(rotary_pos_emb=True, rotary_xpos=True, rotary_xpos_scale_base=32)).eval()
    x = seeded_randn(2, 5, DIM, seed=1)
    pos = torch.tensor([[0, 1, 2, 3, 4], [0, 2, 4, 6, 8]])
    with torch.no_grad():
        batched = layers(x, pos=pos)
        rows = torch.cat([layers(x[i : i + 1], pos=pos[i]) for i in range(2)])
    assert_close(batched, rows, "per-row positions", atol=1e-4)


def test_rotary_xpos_positions_match_reference_for_flat_positions():
    ref, ours = paired(_layers(rotary_pos_emb=True, rotary_xpos=True, rotary_xpos_scale_base=16))
    x, pos = seeded_randn(2, 5, DIM, seed=2), torch.arange(5)
    with torch.no_grad():
        assert_close(ref(x, pos=pos), ours(x, pos=pos))


def test_rotary_xpos_rejects_positions_of_wrong_rank():
    layers = xtf_core.build(_layers(rotary_pos_emb=True, rotary_xpos=True)).eval()
    with pytest.raises(ValueError, match="rotary positions"):
        layers(seeded_randn(2, 4, DIM, seed=0), pos=torch.zeros(2, 1, 4, dtype=torch.long))


# ---------------------------------------------------------------------------------------------- (c)


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize(
    "layers",
    [
        _layers("Encoder"),
        _layers("Decoder"),
        _layers("Encoder", rel_pos_bias=True, use_rmsnorm=True),
        _layers("Decoder", rotary_pos_emb=True, alibi_pos_bias=True),
        _layers("Encoder", pre_norm=False, custom_layers=["f", "a", "f"]),
    ],
    ids=["encoder", "decoder", "encoder_rel_pos", "decoder_rotary_alibi", "encoder_post_norm_custom"],
)
def test_attention_layers_run_on_embeddings(layers, use_mask):
    ref, ours = paired(layers)
    x = seeded_randn(3, 7, DIM, seed=0)
    mask = seeded_mask(3, 7, seed=1) if use_mask else None
    with torch.no_grad():
        out = ours(x, mask=mask)
        assert out.shape == x.shape
        assert torch.isfinite(out).all()
        assert_close(ref(x, mask=mask), out, "AttentionLayers output")
        hidden_out, inter = ours(x, mask=mask, return_hiddens=True)
    assert_close(out, hidden_out, "return_hiddens output")
    assert len(inter.hiddens) == ours.layer_types.count("a")


# ---------------------------------------------------------------------------------------------- (d)

PATHS = {
    "sdpa": ({}, False),
    "flash": ({"attn_flash": True}, False),
    "explicit_cross_residual": ({"residual_attn": True, "cross_residual_attn": True}, False),
    "explicit_return_attn": ({}, True),
}


def _context_inputs(batch: int = 3, seq: int = 4, ctx: int = 5):
    x = seeded_randn(batch, seq, DIM, seed=10)
    context = seeded_randn(batch, ctx, DIM, seed=11)
    context_mask = seeded_mask(batch, ctx, seed=12)
    context_mask[0] = False  # row 0 may attend to no context at all
    context_mask[2] = False
    return x, context, context_mask


def _cross_blocks(model: Any) -> list[Attention]:
    return [layer[1] for t, layer in zip(model.layer_types, model.layers) if t == "c"]


@pytest.mark.parametrize("path", sorted(PATHS))
def test_empty_context_rows_attention_module(path):
    options, need_logits = PATHS[path]
    model = xtf_core.build(_layers("Decoder", cross_attend=True, **options)).eval()
    x, context, context_mask = _context_inputs()
    x.requires_grad_(True)
    context.requires_grad_(True)
    for block in _cross_blocks(model):
        out, _ = block(x, context=context, context_mask=context_mask, need_logits=need_logits)
        assert torch.isfinite(out).all()
        assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.equal(out[2], torch.zeros_like(out[2]))
        assert out[1].abs().sum() > 0
        out.sum().backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(context.grad).all()
        assert torch.equal(context.grad[0], torch.zeros_like(context.grad[0]))
        assert all(torch.isfinite(p.grad).all() for p in block.parameters() if p.grad is not None)


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("cls", ["Encoder", "Decoder", "CrossAttender"])
def test_empty_context_rows_model(cls, path):
    options, return_attn = PATHS[path]
    kw = {} if cls == "CrossAttender" else {"cross_attend": True}
    spec = _layers(cls, **kw, **options)
    ref, ours = paired(spec)
    x, context, context_mask = _context_inputs()

    def run(model: Any, ctx: torch.Tensor) -> torch.Tensor:
        if return_attn:
            out, _ = model(x, context=ctx, context_mask=context_mask, return_hiddens=True, return_attn=True)
            return out
        return model(x, context=ctx, context_mask=context_mask)

    with torch.no_grad():
        expected = ref(x, context=context, context_mask=context_mask)
        out = run(ours, context)
        # rows with no visible context ignore the context's values entirely
        other = run(ours, seeded_randn(*context.shape, seed=99))
    assert torch.isfinite(out).all()
    assert_close(expected, out, "model output")
    assert_close(out[[0, 2]], other[[0, 2]], "rows without context", atol=0.0)
    assert not torch.allclose(out[1], other[1])  # row 1 does see its context

    # finite gradients for every parameter and input, and none flowing into masked-out context rows
    ours.train()
    xg, cg = x.clone().requires_grad_(True), context.clone().requires_grad_(True)
    if return_attn:
        out, _ = ours(xg, context=cg, context_mask=context_mask, return_hiddens=True, return_attn=True)
    else:
        out = ours(xg, context=cg, context_mask=context_mask)
    out.square().mean().backward()
    assert torch.isfinite(xg.grad).all() and torch.isfinite(cg.grad).all()
    assert torch.equal(cg.grad[[0, 2]], torch.zeros_like(cg.grad[[0, 2]]))
    for name, p in ours.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("path", sorted(PATHS))
def test_empty_context_rows_xtransformer(path):
    options, _ = PATHS[path]
    spec = {
        "class": "XTransformer",
        "dim": DIM,
        "enc_num_tokens": 20,
        "enc_max_seq_len": 16,
        "enc_depth": 1,
        "enc_heads": 2,
        "enc_attn_dim_head": 8,
        "dec_num_tokens": 20,
        "dec_max_seq_len": 16,
        "dec_depth": 2,
        "dec_heads": 2,
        "dec_attn_dim_head": 8,
        **{f"dec_{k}": v for k, v in options.items()},
    }
    ref, ours = paired(spec)
    src = torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(0))
    tgt = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1] = False  # the second source is all padding
    with torch.no_grad():
        assert_close(ref(src, tgt, mask=mask), ours(src, tgt, mask=mask), "loss")
    ours.train()
    loss = ours(src, tgt, mask=mask)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in ours.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
