"""Numerical parity with x-transformers 2.31.10.

Every test builds the same spec twice (reference and xtf), checks the state-dict layout matches, copies
perturbed reference weights into xtf with `strict=True` and compares outputs in float32 within 1e-5.
Property tests draw random tiny configs from the supported option families; the explicit cases below
them give one readable failure per family.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from parity_configs import (
    PARITY_SETTINGS,
    assert_close,
    assert_same_greedy,
    attn_layers_spec,
    cached_steps,
    continuous_wrapper_spec,
    max_abs_diff,
    paired,
    paired_or_reject,
    seeded_mask,
    seeded_randn,
    token_wrapper_spec,
    x_transformers,
    xtransformer_spec,
)

import xtf_core

# The two heaviest properties (each example builds and runs two encoder-decoder or cross-attending stacks)
# draw half the examples: 50 still cover every class, mask combination and option several times over.
HEAVY_EXAMPLES = 50


def seeded_tokens(num_tokens: int, batch: int, seq: int, seed: int) -> torch.Tensor:
    return torch.randint(0, num_tokens, (batch, seq), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- checks


def check_tokens(ref: Any, ours: Any, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    with torch.no_grad():
        assert_close(ref(tokens, mask=mask), ours(tokens, mask=mask), "logits")
        assert_close(
            ref(tokens, mask=mask, return_embeddings=True),
            ours(tokens, mask=mask, return_embeddings=True),
            "embeddings",
        )


def check_cross(ref: Any, ours: Any, dim: int, batch: int, seq: int, ctx_len: int, seed: int, **masks: Any):
    x = seeded_randn(batch, seq, dim, seed=seed)
    context = seeded_randn(batch, ctx_len, dim, seed=seed + 1)
    with torch.no_grad():
        expected = ref(x, context=context, **masks)
        actual = ours(x, context=context, **masks)
    assert torch.isfinite(actual).all()
    assert_close(expected, actual, "cross-attention stack output")


def check_xl(ref: Any, ours: Any, segments: list[torch.Tensor], *, continuous: bool = False) -> None:
    """Run the segments in turn, feeding the returned memories back; compare outputs and memories."""
    ref_mems = our_mems = None
    with torch.no_grad():
        for i, segment in enumerate(segments):
            # x-transformers' ContinuousTransformerWrapper returns a tuple it cannot take back: give it a list
            ref_in = list(ref_mems) if (continuous and ref_mems is not None) else ref_mems
            ref_out, ref_mems = ref(segment, mems=ref_in, return_mems=True)
            our_out, our_mems = ours(segment, mems=our_mems, return_mems=True)
            assert_close(ref_out, our_out, f"segment {i} output")
            assert_close(list(ref_mems), list(our_mems), f"segment {i} memories")


def check_generate(ref: Any, ours: Any, prompt: torch.Tensor, steps: int) -> None:
    ref_ar = x_transformers.AutoregressiveWrapper(ref)
    our_ar = xtf_core.AutoregressiveWrapper(ours)
    ref_tokens = ref_ar.generate(prompt, steps, temperature=0.0)
    our_cached = our_ar.generate(prompt, steps, temperature=0.0, cache_kv=True)
    our_uncached = our_ar.generate(prompt, steps, temperature=0.0, cache_kv=False)
    assert_same_greedy(
        lambda _, tokens: ours(tokens)[:, -1],
        prompt,
        our_uncached,
        our_cached,
        "xtf with and without kv cache",
    )
    assert_same_greedy(lambda _, tokens: ref(tokens)[:, -1], prompt, ref_tokens, our_cached, "greedy tokens")


def check_xtransformer_generate(
    ref: Any, ours: Any, src: torch.Tensor, start: torch.Tensor, steps: int, mask
):
    ref_out = ref.generate(src, start, steps, mask=mask, temperature=0.0)
    our_out = ours.generate(src, start, steps, mask=mask, temperature=0.0)
    with torch.no_grad():
        encoded = ref.encoder(src, mask=mask, return_embeddings=True)

    def logits_at(row: int, tokens: torch.Tensor) -> torch.Tensor:
        row_mask = None if mask is None else mask[row : row + 1]
        return ref.decoder.net(tokens, context=encoded[row : row + 1], context_mask=row_mask)[:, -1]

    assert_same_greedy(logits_at, start, ref_out, our_out, "greedy tokens")


def check_cached_logits(ref: Any, ours: Any, tokens: torch.Tensor, prompt_len: int) -> None:
    """Incremental decoding with the kv cache gives the full forward's logits, on both sides."""
    with torch.no_grad():
        full = ours(tokens)
        assert_close(ref(tokens), full, "uncached logits")
        assert_close(full[:, prompt_len - 1 :], cached_steps(ours, tokens, prompt_len), "xtf cached logits")
        assert_close(
            cached_steps(ref, tokens, prompt_len), full[:, prompt_len - 1 :], "reference cached logits"
        )


def reference_breaks_with_offsets(layers: dict[str, Any]) -> bool:
    """x-transformers 2.31.10 hands its rotary positions (which include Transformer-XL memories and the
    cache offset) to ALiBi as custom positions, so rotary + ALiBi with mems or a kv cache gives a wrong
    shape or crashes there. xtf computes ALiBi over the real query/key lengths; nothing to compare."""
    return bool(layers.get("alibi_pos_bias")) and bool(
        layers.get("rotary_pos_emb") or layers.get("rotary_xpos")
    )


# ---------------------------------------------------------------------------------------------- property tests


@PARITY_SETTINGS
@given(
    spec=token_wrapper_spec(),
    batch=st.integers(1, 3),
    seq=st.integers(1, 8),
    use_mask=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_token_wrapper_parity(spec, batch, seq, use_mask, seed):
    ref, ours = paired_or_reject(spec, seed)
    tokens = seeded_tokens(spec["num_tokens"], batch, seq, seed)
    check_tokens(ref, ours, tokens, seeded_mask(batch, seq, seed) if use_mask else None)


@settings(PARITY_SETTINGS, max_examples=HEAVY_EXAMPLES)
@given(data=st.data(), batch=st.integers(1, 3), seq=st.integers(1, 8), ctx=st.integers(1, 6))
def test_cross_attention_parity(data, batch, seq, ctx):
    cls = data.draw(st.sampled_from(("Encoder", "Decoder", "CrossAttender")), label="class")
    spec = data.draw(attn_layers_spec(cls, cross_attend=True), label="spec")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    ref, ours = paired_or_reject(spec, seed)
    masks: dict[str, Any] = {}
    if data.draw(st.booleans(), label="use context_mask"):
        empty = data.draw(st.booleans(), label="empty context rows")
        masks["context_mask"] = seeded_mask(batch, ctx, seed, empty_rows=empty)
    if cls != "CrossAttender" and data.draw(st.booleans(), label="use mask"):
        masks["mask"] = seeded_mask(batch, seq, seed + 7)
    check_cross(ref, ours, spec["dim"], batch, seq, ctx, seed, **masks)


@PARITY_SETTINGS
@given(data=st.data(), batch=st.integers(1, 3))
def test_transformer_xl_parity(data, batch):
    max_mem_len = data.draw(st.integers(1, 8), label="max_mem_len")
    spec = data.draw(token_wrapper_spec(max_mem_len=max_mem_len), label="spec")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    lens = data.draw(st.lists(st.integers(1, 6), min_size=2, max_size=3), label="segment lengths")
    assume(not reference_breaks_with_offsets(spec["attn_layers"]))
    ref, ours = paired_or_reject(spec, seed)
    segments = [seeded_tokens(spec["num_tokens"], batch, n, seed + i) for i, n in enumerate(lens)]
    check_xl(ref, ours, segments)


@PARITY_SETTINGS
@given(data=st.data(), batch=st.integers(1, 3), seq=st.integers(1, 8))
def test_continuous_wrapper_parity(data, batch, seq):
    spec = data.draw(continuous_wrapper_spec(), label="spec")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    ref, ours = paired_or_reject(spec, seed)
    dim_in = spec.get("dim_in", spec["attn_layers"]["dim"])
    x = seeded_randn(batch, seq, dim_in, seed=seed)
    mask = seeded_mask(batch, seq, seed) if data.draw(st.booleans(), label="use mask") else None
    with torch.no_grad():
        assert_close(ref(x, mask=mask), ours(x, mask=mask), "continuous output")


@PARITY_SETTINGS
@given(data=st.data(), batch=st.integers(1, 3))
def test_continuous_transformer_xl_parity(data, batch):
    max_mem_len = data.draw(st.integers(1, 8), label="max_mem_len")
    spec = data.draw(continuous_wrapper_spec(max_mem_len=max_mem_len), label="spec")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    lens = data.draw(st.lists(st.integers(1, 6), min_size=2, max_size=3), label="segment lengths")
    assume(not reference_breaks_with_offsets(spec["attn_layers"]))
    ref, ours = paired_or_reject(spec, seed)
    dim_in = spec.get("dim_in", spec["attn_layers"]["dim"])
    segments = [seeded_randn(batch, n, dim_in, seed=seed + i) for i, n in enumerate(lens)]
    check_xl(ref, ours, segments, continuous=True)


@PARITY_SETTINGS
@given(data=st.data(), batch=st.integers(1, 3))
def test_kv_cache_and_generate_parity(data, batch):
    spec = data.draw(token_wrapper_spec("Decoder", memory_tokens=False), label="spec")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    prompt_len = data.draw(st.integers(1, 4), label="prompt length")
    steps = data.draw(st.integers(1, 4), label="generated tokens")
    assume(not reference_breaks_with_offsets(spec["attn_layers"]))
    ref, ours = paired_or_reject(spec, seed)
    tokens = seeded_tokens(spec["num_tokens"], batch, prompt_len + steps, seed)
    check_cached_logits(ref, ours, tokens, prompt_len)
    check_generate(ref, ours, tokens[:, :prompt_len], steps)


@settings(PARITY_SETTINGS, max_examples=HEAVY_EXAMPLES)
@given(data=st.data(), batch=st.integers(1, 3))
def test_xtransformer_parity(data, batch):
    spec = data.draw(xtransformer_spec(), label="spec")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    src_len = data.draw(st.integers(1, 8), label="source length")
    tgt_len = data.draw(st.integers(2, 8), label="target length")
    dec_layers = {k[len("dec_") :]: v for k, v in spec.items() if k.startswith("dec_")}
    assume(not reference_breaks_with_offsets(dec_layers))  # generate uses the kv cache
    ref, ours = paired_or_reject(spec, seed)
    num_tokens = spec["enc_num_tokens"]
    src = seeded_tokens(num_tokens, batch, src_len, seed)
    tgt = seeded_tokens(num_tokens, batch, tgt_len, seed + 1)
    mask = seeded_mask(batch, src_len, seed) if data.draw(st.booleans(), label="use mask") else None
    with torch.no_grad():
        assert_close(ref(src, tgt, mask=mask), ours(src, tgt, mask=mask), "loss")
    check_xtransformer_generate(ref, ours, src, tgt[:, :1], 3, mask)


# ---------------------------------------------------------------------------------------------- explicit cases


def _tw(layers: dict[str, Any], **wrapper: Any) -> dict[str, Any]:
    return {
        "class": "TransformerWrapper",
        "num_tokens": 32,
        "max_seq_len": 16,
        "attn_layers": layers,
        **wrapper,
    }


def _enc(**kw: Any) -> dict[str, Any]:
    return {"class": "Encoder", "dim": 16, "depth": 2, "heads": 2, "attn_dim_head": 8, **kw}


def _dec(**kw: Any) -> dict[str, Any]:
    return {"class": "Decoder", "dim": 16, "depth": 2, "heads": 2, "attn_dim_head": 8, **kw}


FAMILY_SPECS = {
    "heads_dim_head": _tw(_enc(heads=4, attn_dim_head=4)),
    "single_head": _tw(_enc(heads=1, attn_dim_head=16)),
    "ff_mult_glu_swish": _tw(_dec(ff_mult=2, ff_glu=True, ff_swish=True)),
    "ff_relu_squared_no_bias": _tw(_enc(ff_relu_squared=True, ff_no_bias=True)),
    "post_norm": _tw(_enc(pre_norm=False)),
    "rmsnorm": _tw(_dec(use_rmsnorm=True)),
    "simple_rmsnorm": _tw(_enc(use_simple_rmsnorm=True)),
    "scalenorm": _tw(_dec(use_scalenorm=True)),
    "sandwich_norm": _tw(_enc(sandwich_norm=True)),
    "residual_attn": _tw(_dec(residual_attn=True)),
    "custom_layers": _tw(_enc(custom_layers=["f", "a", "a", "f", "f"])),
    "par_ratio": _tw(_dec(depth=3, par_ratio=4)),
    "rotary": _tw(_enc(rotary_pos_emb=True, rotary_emb_dim=4)),
    "rotary_xpos": _tw(_dec(rotary_pos_emb=True, rotary_xpos=True, rotary_xpos_scale_base=16)),
    "alibi": _tw(_dec(heads=4, attn_dim_head=4, alibi_pos_bias=True, alibi_num_heads=2)),
    "rel_pos_bias": _tw(_enc(rel_pos_bias=True)),
    "no_abs_pos_emb": _tw(_dec(), use_abs_pos_emb=False),
    "memory_tokens": _tw(_enc(), num_memory_tokens=2),
    "tie_embedding": _tw(_dec(), tie_embedding=True),
    "emb_dim_post_emb_norm": _tw(_enc(), emb_dim=24, post_emb_norm=True, emb_dropout=0.1),
    "gqa": _tw(_dec(heads=4, attn_dim_head=4, attn_kv_heads=2)),
    "qk_norm": _tw(_enc(attn_qk_norm=True)),
    "gate_values": _tw(_dec(attn_gate_values=True)),
    "flash": _tw(_enc(attn_flash=True, alibi_pos_bias=True)),
}


@pytest.mark.parametrize("family", sorted(FAMILY_SPECS))
def test_family_parity(family):
    spec = FAMILY_SPECS[family]
    ref, ours = paired(spec)
    tokens = seeded_tokens(32, 3, 7, seed=1)
    check_tokens(ref, ours, tokens)
    check_tokens(ref, ours, tokens, seeded_mask(3, 7, seed=2))


CROSS_SPECS = {
    "encoder_cross": _enc(cross_attend=True),
    "decoder_cross_rotary": _dec(cross_attend=True, rotary_pos_emb=True),
    "cross_attender": {"class": "CrossAttender", "dim": 16, "depth": 2, "heads": 2, "attn_dim_head": 8},
    "cross_flash": _dec(cross_attend=True, attn_flash=True),
    "cross_residual": _enc(cross_attend=True, residual_attn=True, cross_residual_attn=True),
}


@pytest.mark.parametrize("name", sorted(CROSS_SPECS))
def test_cross_attention_family_parity(name):
    ref, ours = paired(CROSS_SPECS[name])
    context_mask = seeded_mask(3, 5, seed=3, empty_rows=True)  # row 0 sees no context at all
    check_cross(ref, ours, 16, 3, 6, 5, seed=4, context_mask=context_mask, mask=seeded_mask(3, 6, seed=5))


@pytest.mark.parametrize(
    "layers",
    [_dec(), _enc(rel_pos_bias=True), _dec(rotary_pos_emb=True), _dec(alibi_pos_bias=True)],
    ids=["decoder", "encoder_rel_pos", "decoder_rotary", "decoder_alibi"],
)
def test_transformer_xl_family_parity(layers):
    spec = _tw(layers, max_mem_len=5)
    ref, ours = paired(spec)
    check_xl(ref, ours, [seeded_tokens(32, 2, n, seed=n) for n in (4, 3, 6)])


def test_continuous_family_parity():
    spec = {
        "class": "ContinuousTransformerWrapper",
        "dim_in": 8,
        "dim_out": 24,
        "max_seq_len": 16,
        "num_memory_tokens": 2,
        "attn_layers": _enc(rotary_pos_emb=True),
    }
    ref, ours = paired(spec)
    x = seeded_randn(2, 6, 8, seed=0)
    with torch.no_grad():
        assert_close(ref(x, mask=seeded_mask(2, 6, seed=1)), ours(x, mask=seeded_mask(2, 6, seed=1)))


def test_continuous_transformer_xl_family_parity():
    spec = {
        "class": "ContinuousTransformerWrapper",
        "max_seq_len": 16,
        "max_mem_len": 4,
        "attn_layers": _dec(),
    }
    ref, ours = paired(spec)
    check_xl(ref, ours, [seeded_randn(2, n, 16, seed=n) for n in (5, 3, 2)], continuous=True)


@pytest.mark.parametrize(
    "layers",
    [_dec(), _dec(rotary_pos_emb=True, rotary_xpos=True), _dec(alibi_pos_bias=True), _dec(attn_kv_heads=1)],
    ids=["decoder", "rotary_xpos", "alibi", "mqa"],
)
def test_generate_family_parity(layers):
    ref, ours = paired(_tw(layers))
    tokens = seeded_tokens(32, 2, 8, seed=0)
    check_cached_logits(ref, ours, tokens, prompt_len=3)
    check_generate(ref, ours, tokens[:, :3], 5)


def test_xtransformer_family_parity():
    spec = {
        "class": "XTransformer",
        "dim": 16,
        "tie_token_emb": True,
        "enc_num_tokens": 32,
        "enc_max_seq_len": 16,
        "enc_depth": 2,
        "enc_heads": 2,
        "enc_attn_dim_head": 8,
        "dec_num_tokens": 32,
        "dec_max_seq_len": 16,
        "dec_depth": 2,
        "dec_heads": 2,
        "dec_attn_dim_head": 8,
        "dec_rotary_pos_emb": True,
    }
    ref, ours = paired(spec)
    src, tgt = seeded_tokens(32, 2, 7, seed=0), seeded_tokens(32, 2, 5, seed=1)
    mask = seeded_mask(2, 7, seed=2)
    with torch.no_grad():
        assert_close(ref(src, tgt, mask=mask), ours(src, tgt, mask=mask), "loss")
    check_xtransformer_generate(ref, ours, src, tgt[:, :1], 4, mask)


def test_greedy_comparison_forgives_only_float_ties():
    prompt, expected = torch.tensor([[1, 2]]), torch.tensor([[3, 4, 5]])
    got = torch.tensor([[3, 6, 0]])  # parts at step 1

    def logits(second_best: float):
        return lambda row, tokens: torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0, second_best]])

    assert_same_greedy(logits(1.0 - 1e-6), prompt, expected, got, "tie")
    with pytest.raises(AssertionError, match="parts at step 1"):
        assert_same_greedy(logits(0.5), prompt, expected, got, "no tie")
    seen = []
    assert_same_greedy(
        lambda row, tokens: seen.append(tokens) or torch.zeros(7), prompt, expected, expected, ""
    )
    assert not seen  # equal rows ask for no logits


def test_max_abs_diff_helper_detects_structure_mismatch():
    with pytest.raises(AssertionError):
        max_abs_diff([torch.zeros(2)], [torch.zeros(3)])


def test_rotary_with_alibi_under_offsets_is_self_consistent():
    """x-transformers 2.31.10 feeds its rotary positions to ALiBi, which breaks with mems or a kv cache
    (see `reference_breaks_with_offsets`). xtf must still match it on a plain pass, and be consistent with
    itself: cached decoding equals the full pass, and full Transformer-XL memories equal one long pass."""
    spec = _tw(_dec(rotary_pos_emb=True, alibi_pos_bias=True), use_abs_pos_emb=False, max_mem_len=8)
    ref, ours = paired(spec)
    tokens = seeded_tokens(32, 2, 8, seed=3)
    with torch.no_grad():
        full = ours(tokens)
        assert_close(ref(tokens), full, "plain pass")
        assert_close(full[:, 2:], cached_steps(ours, tokens, 3), "cached logits")
        first, mems = ours(tokens[:, :5], return_mems=True)
        second, _ = ours(tokens[:, 5:], mems=mems, return_mems=True)
    assert_close(full, torch.cat((first, second), dim=1), "segmented vs whole")
