"""Attention-level options (`attn_*`, `cross_attn_*`) against the real x-transformers 2.31.10.

Each option is built both ways from one spec (`paired`: same state-dict names and shapes, perturbed
reference weights copied with `strict=True`) and compared within 1e-5 in float32: a decoder with and
without a key mask and through the key/value cache, an encoder with a mask, and cross-attention with a
context mask for the `cross_attn_` form. Combinations x-transformers refuses (or cannot run) raise
`UnsupportedOptionError` naming the option.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from parity_configs import (
    assert_close,
    cached_steps,
    paired,
    paired_or_reject,
    seeded_mask,
    seeded_randn,
    x_transformers,
    xt_module,
)

import xtf_core
from xtf_core.errors import UnsupportedOptionError
from xtf_core.model.attention import Attention

DIM, HEADS, DIM_HEAD, NUM_TOKENS = 16, 2, 8, 32

# option name -> the Attention kwargs it is tested with (values chosen so that each one changes the output)
OPTIONS: dict[str, dict[str, Any]] = {
    "num_mem_kv": {"num_mem_kv": 2},
    "num_mem_kv+qk_norm": {"num_mem_kv": 2, "qk_norm": True},
    "on_attn": {"on_attn": True},
    "pre_talking_heads": {"pre_talking_heads": True},
    "post_talking_heads": {"post_talking_heads": True},
    "pre_scale_post_talking_heads": {"pre_scale_post_talking_heads": True},
    "value_rmsnorm": {"value_rmsnorm": True},
    "head_scale": {"head_scale": True},
    "sparse_topk": {"sparse_topk": 2},
    "sparse_topk_straight_through": {"sparse_topk": 2, "sparse_topk_straight_through": True},
    "max_attend_past": {"max_attend_past": 2},
    "qk_norm_groups": {"qk_norm": True, "qk_norm_groups": 2},
    "swiglu_values": {"gate_values": True, "swiglu_values": True},
    "gate_value_heads": {"gate_value_heads": True},
    "softclamp_logits": {"softclamp_logits": True, "logit_softclamp_value": 0.5},
    "zero_init_output": {"zero_init_output": True},
    "sublayer_dropout": {"sublayer_dropout": 0.1},
    "onnxable": {"onnxable": True},
    "qk_rmsnorm": {"qk_rmsnorm": True},
    "k_rmsnorm": {"k_rmsnorm": True},
    "gate_values_headwise": {"gate_values": True, "gate_values_headwise": True},
    "gate_values_rank": {"gate_values": True, "gate_values_rank": 4, "low_rank_silu_gates": False},
    "output_gate": {"output_gate": True, "output_gate_rank": 4},
    "output_gate_headwise": {"output_gate": True, "output_gate_headwise": True, "gate_values": True},
    "value_dim_head": {"value_dim_head": 6},
    "project_out": {"project_out": True},
    "add_zero_kv": {"add_zero_kv": True},
    "head_learned_sink": {"head_learned_sink": True},
    "sigmoid": {"sigmoid": True},
    "hard": {"hard": True},
    "l2_distance": {"l2_distance": True},
    "cog_signed": {"cog_signed": True},
    "laser": {"laser": True, "laser_softclamp_value": 5.0},
    "orthog_projected_values": {"orthog_projected_values": True, "orthog_projected_values_per_head": True},
    "attend_sdp_kwargs": {
        "flash": True,
        "attend_sdp_kwargs": {"enable_flash": False, "enable_math": True, "enable_mem_efficient": False},
    },
    "flash+num_mem_kv+max_attend_past+add_zero_kv": {
        "flash": True,
        "num_mem_kv": 2,
        "max_attend_past": 3,
        "add_zero_kv": True,
    },
    "latent_q": {"use_latent_q": True, "dim_latent_q": 8},
    "latent_kv": {"use_latent_kv": True, "dim_latent_kv": 8},
    "latent_q+kv+rope_subheads+mem_kv": {
        "use_latent_q": True,
        "dim_latent_q": 8,
        "use_latent_kv": True,
        "dim_latent_kv": 12,
        "latent_rope_subheads": 1,
        "num_mem_kv": 2,
    },
    "rel_proj_pos_bias": {
        "use_rel_proj_pos_bias": True,
        "rel_proj_num_distance_basis": 4,
        "rel_proj_max_dist": 5,
    },
    "grouped+mem_kv+rmsnorm+gates": {
        "kv_heads": 1,
        "num_mem_kv": 3,
        "qk_rmsnorm": True,
        "head_scale": True,
        "gate_value_heads": True,
        "gate_values": True,
        "output_gate": True,
    },
}
# decoding through the cache differs from the full pass by design (the projection spans the whole sequence)
NOT_CACHE_CONSISTENT = {"orthog_projected_values"}


def _prefixed(prefix: str, options: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in options.items()}


def _layers(cls: str, **kw: Any) -> dict[str, Any]:
    return {"class": cls, "dim": DIM, "depth": 2, "heads": HEADS, "attn_dim_head": DIM_HEAD, **kw}


def _tw(layers: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {
        "class": "TransformerWrapper",
        "num_tokens": NUM_TOKENS,
        "max_seq_len": 16,
        "attn_layers": layers,
        **kw,
    }


def _tokens(batch: int, seq: int, seed: int) -> torch.Tensor:
    return torch.randint(0, NUM_TOKENS, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _assert_decoder_parity(ref: Any, ours: Any, seq: int = 7, cache_consistent: bool = True) -> None:
    """Logits, masked logits and cached decoding (prompt of 3) agree with x-transformers; with
    `cache_consistent`, xtf's cached steps also equal its own full pass."""
    tokens = _tokens(2, seq, seed=1)
    mask = seeded_mask(2, seq, seed=2)
    with torch.no_grad():
        full = ours(tokens)
        assert_close(ref(tokens), full, "logits")
        assert_close(ref(tokens, mask=mask), ours(tokens, mask=mask), "masked logits")
        ours_cached = cached_steps(ours, tokens, prompt_len=3)
        assert_close(cached_steps(ref, tokens, prompt_len=3), ours_cached, "cached logits")
        if cache_consistent:
            assert_close(full[:, 2:], ours_cached, "cached vs full logits")


# ---------------------------------------------------------------------------------------------- per option


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_decoder_option_parity_with_mask_and_kv_cache(name):
    ref, ours = paired(_tw(_layers("Decoder", depth=1, **_prefixed("attn_", OPTIONS[name]))))
    _assert_decoder_parity(ref, ours, cache_consistent=name not in NOT_CACHE_CONSISTENT)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_encoder_option_parity_with_mask(name):
    ref, ours = paired(_tw(_layers("Encoder", depth=1, **_prefixed("attn_", OPTIONS[name]))))
    tokens = _tokens(3, 6, seed=3)
    with torch.no_grad():
        assert_close(ref(tokens), ours(tokens), "logits")
        for seed in (4, 5):
            mask = seeded_mask(3, 6, seed=seed)
            assert_close(ref(tokens, mask=mask), ours(tokens, mask=mask), "masked logits")


CROSS_OPTIONS = {
    **{k: v for k, v in OPTIONS.items() if "flash" not in v and k != "orthog_projected_values"},
    "inverted_attention": {"inverted_attention": True},
    "inverted_attention+sparse_topk": {"inverted_attention": True, "sparse_topk": 2},
}


@pytest.mark.parametrize("name", sorted(CROSS_OPTIONS))
def test_cross_attention_option_parity_with_context_mask(name):
    spec = _layers("Encoder", depth=1, cross_attend=True, **_prefixed("cross_attn_", CROSS_OPTIONS[name]))
    ref, ours = paired(spec)
    x, context = seeded_randn(3, 6, DIM, seed=6), seeded_randn(3, 5, DIM, seed=7)
    masks = {"mask": seeded_mask(3, 6, seed=8), "context_mask": seeded_mask(3, 5, seed=9)}
    with torch.no_grad():
        assert_close(ref(x, context=context), ours(x, context=context), "cross-attention output")
        out = ours(x, context=context, **masks)
        assert torch.isfinite(out).all()
        assert_close(ref(x, context=context, **masks), out, "masked cross-attention output")


@pytest.mark.parametrize(
    "options",
    [
        {"num_mem_kv": 2, "qk_norm": True},
        {"use_latent_kv": True, "dim_latent_kv": 8},
        {"pre_talking_heads": True, "post_talking_heads": True, "sparse_topk": 2},
        {"head_learned_sink": True, "add_zero_kv": True, "value_rmsnorm": True},
    ],
    ids=["mem_kv", "latent_kv", "talking_heads+topk", "sink+zero_kv+value_rmsnorm"],
)
def test_cross_attention_options_through_the_kv_cache(options):
    spec = _tw(_layers("Decoder", cross_attend=True, **_prefixed("cross_attn_", options)))
    ref, ours = paired(spec)
    tokens, context = _tokens(2, 6, seed=1), seeded_randn(2, 4, DIM, seed=2)
    context_mask = seeded_mask(2, 4, seed=3)

    def steps(model: Any) -> torch.Tensor:
        kwargs = {"context": context, "context_mask": context_mask, "return_intermediates": True}
        logits, cache = model(tokens[:, :3], **kwargs)
        out = [logits[:, -1]]
        for t in range(4, 7):
            logits, cache = model(tokens[:, :t], cache=cache, **kwargs)
            out.append(logits[:, -1])
        return torch.stack(out, dim=1)

    with torch.no_grad():
        full = ours(tokens, context=context, context_mask=context_mask)
        assert_close(ref(tokens, context=context, context_mask=context_mask), full, "logits")
        ours_cached = steps(ours)
        assert_close(steps(ref), ours_cached, "cached logits")
        assert_close(full[:, 2:], ours_cached, "cached vs full logits")


def test_learned_value_mix_with_latent_kv_refuses_the_cache():
    """2.31.10 applies the new token's learned mix to every cached position (cached != full pass)."""
    spec = _tw(
        _layers("Decoder", depth=3, add_value_residual=True, attn_use_latent_kv=True, attn_dim_latent_kv=8)
    )
    ref, ours = paired(spec)
    tokens = _tokens(2, 5, seed=1)
    with torch.no_grad():
        assert_close(ref(tokens), ours(tokens), "logits")
        _, cache = ours(tokens[:, :3], return_intermediates=True)
        with pytest.raises(UnsupportedOptionError, match="use_latent_kv"):
            ours(tokens[:, :4], cache=cache, return_intermediates=True)


def test_cross_attention_only_options():
    """`cross_attn_rotate_num_heads` is accepted (rotary reaches cross-attention only with context positions)."""
    spec = _layers("Decoder", cross_attend=True, rotary_pos_emb=True, cross_attn_rotate_num_heads=1)
    ref, ours = paired(spec)
    x, context = seeded_randn(2, 5, DIM, seed=1), seeded_randn(2, 4, DIM, seed=2)
    with torch.no_grad():
        assert_close(ref(x, context=context), ours(x, context=context), "output")
    with pytest.raises(UnsupportedOptionError, match="attn_rotate_num_heads"):
        xtf_core.build(_layers("Decoder", attn_rotate_num_heads=1))


def test_attn_options_apply_to_cross_attention_too():
    """x-transformers hands `attn_*` options to cross-attention as well, unless `cross_attn_*` overrides."""
    spec = _layers(
        "Decoder", cross_attend=True, attn_num_mem_kv=2, cross_attn_num_mem_kv=3, attn_head_scale=True
    )
    ref, ours = paired(spec)
    assert ours.layers[1][1].mem_k.shape[1] == 3 and ours.layers[1][1].head_scale_params is not None
    x, context = seeded_randn(2, 5, DIM, seed=1), seeded_randn(2, 4, DIM, seed=2)
    with torch.no_grad():
        assert_close(ref(x, context=context), ours(x, context=context), "output")


def test_xtransformer_routes_encoder_decoder_and_cross_attention_options():
    spec = {
        "class": "XTransformer",
        "dim": DIM,
        "enc_num_tokens": 20,
        "enc_max_seq_len": 8,
        "dec_num_tokens": 20,
        "dec_max_seq_len": 8,
        "enc_depth": 1,
        "enc_heads": HEADS,
        "enc_attn_dim_head": DIM_HEAD,
        "dec_depth": 1,
        "dec_heads": HEADS,
        "dec_attn_dim_head": DIM_HEAD,
        "enc_attn_num_mem_kv": 2,
        "enc_attn_head_scale": True,
        "dec_attn_sparse_topk": 2,
        "dec_cross_attn_num_mem_kv": 3,
        "dec_cross_attn_value_rmsnorm": True,
    }
    ref, ours = paired(spec)
    src = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(0))
    tgt = torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(1))
    src_mask = seeded_mask(2, 6, seed=2)
    with torch.no_grad():
        assert_close(ref(src, tgt, mask=src_mask), ours(src, tgt, mask=src_mask), "loss")
        # 2.31.10's sparse top-k needs at least k keys: start from two tokens
        torch.manual_seed(3)
        expected = ref.generate(src, tgt[:, :2], 3, mask=src_mask)
        torch.manual_seed(3)
        assert torch.equal(expected, ours.generate(src, tgt[:, :2], 3, mask=src_mask))


def test_selective_attention_parity_without_cache():
    ref, ours = paired(_tw(_layers("Decoder", attn_selective=True)))
    tokens = _tokens(2, 7, seed=1)
    mask = seeded_mask(2, 7, seed=2)
    with torch.no_grad():
        assert_close(ref(tokens), ours(tokens), "logits")
        assert_close(ref(tokens, mask=mask), ours(tokens, mask=mask), "masked logits")
        _, cache = ours(tokens[:, :3], return_intermediates=True)
        with pytest.raises(UnsupportedOptionError, match="selective"):
            ours(tokens[:, :4], cache=cache, return_intermediates=True)
    assert not ours.attn_layers.layers[0][1].can_cache_kv
    assert not ours.can_cache_kv  # so generate() runs without the cache, as x-transformers does
    prompt = _tokens(2, 3, seed=4)
    expected = x_transformers.AutoregressiveWrapper(ref).generate(prompt, 4, temperature=0.0)
    actual = xtf_core.AutoregressiveWrapper(ours).generate(prompt, 4, temperature=0.0)
    assert torch.equal(expected, actual)


def test_multi_latent_attention_with_rotary_sub_heads_and_cache():
    spec = _layers(
        "Decoder",
        heads=4,
        rotary_pos_emb=True,
        attn_use_latent_kv=True,
        attn_dim_latent_kv=8,
        attn_latent_rope_subheads=2,
    )
    ref, ours = paired(_tw(spec))
    tokens = _tokens(2, 7, seed=1)
    with torch.no_grad():
        full = ours(tokens)
        assert_close(ref(tokens), full, "logits")
        ours_cached = cached_steps(ours, tokens, prompt_len=3)
        assert_close(cached_steps(ref, tokens, prompt_len=3), ours_cached, "cached logits")
        assert_close(full[:, 2:], ours_cached, "cached vs full logits")
        _, cache = ours(tokens[:, :3], return_intermediates=True)
    latent, sub_heads = cache.attn_intermediates[0].cached_kv
    assert latent.shape == (2, 3, 8) and sub_heads.shape == (2, 2, 3, DIM_HEAD)  # the cache holds the latent


@pytest.mark.parametrize(
    "options",
    [
        {"attn_data_dependent_alibi": True},
        {"attn_data_dependent_alibi": True, "attn_num_mem_kv": 2},
        {
            "attn_data_dependent_alibi": True,
            "attn_data_dependent_alibi_kwargs": {"bias_init": 1.0, "post_log_scale": 2.0},
        },
        {
            "attn_data_dependent_alibi": True,
            "attn_data_dependent_alibi_per_row": True,
            "attn_data_dependent_alibi_per_row_dim_head": 4,
        },
    ],
    ids=["plain", "mem_kv", "kwargs", "per_row"],
)
@pytest.mark.parametrize("cls", ["Decoder", "Encoder"])
def test_data_dependent_alibi_parity(options, cls):
    if cls == "Encoder" and "attn_data_dependent_alibi_per_row" in options:
        with pytest.raises(UnsupportedOptionError, match="data_dependent_alibi_per_row"):
            xtf_core.build(_tw(_layers(cls, **options)))
        return
    ref, ours = paired(_tw(_layers(cls, **options)))
    tokens = _tokens(2, 7, seed=1)
    mask = seeded_mask(2, 7, seed=2)
    with torch.no_grad():
        assert_close(ref(tokens), ours(tokens), "logits")
        assert_close(ref(tokens, mask=mask), ours(tokens, mask=mask), "masked logits")
        if cls == "Decoder":  # the bias spans the current tokens only: x-transformers breaks with a cache
            _, cache = ours(tokens[:, :3], return_intermediates=True)
            with pytest.raises(UnsupportedOptionError, match="data_dependent_alibi"):
                ours(tokens[:, :4], cache=cache, return_intermediates=True)


@pytest.mark.parametrize(
    "options",
    [{"attn_cope_max_pos": 4}, {"attn_cope_max_pos": 4, "attn_cope_talking_heads": True}],
    ids=["plain", "talking_heads"],
)
def test_cope_parity_with_mask_and_cache(options):
    ref, ours = paired(_tw(_layers("Decoder", attn_use_cope=True, **options)))
    _assert_decoder_parity(ref, ours)


def test_gumbel_softmax_parity_under_the_same_seed():
    ref, ours = paired(_tw(_layers("Decoder", attn_gumbel_softmax=True, attn_gumbel_softmax_temp=0.5)))
    tokens = _tokens(2, 6, seed=1)
    with torch.no_grad():
        torch.manual_seed(3)
        expected = ref(tokens)
        torch.manual_seed(3)
        assert_close(expected, ours(tokens), "logits")


def test_mem_kv_with_transformer_xl_memories():
    spec = _tw(
        _layers("Decoder", attn_num_mem_kv=2, attn_max_attend_past=4, rotary_pos_emb=True), max_mem_len=5
    )
    ref, ours = paired(spec)
    ref_mems = our_mems = None
    with torch.no_grad():
        for i, n in enumerate((4, 3, 5)):
            segment = _tokens(2, n, seed=10 + i)
            ref_out, ref_mems = ref(segment, mems=ref_mems, return_mems=True)
            our_out, our_mems = ours(segment, mems=our_mems, return_mems=True)
            assert_close(ref_out, our_out, f"segment {i} output")


def test_options_with_residual_attention_and_relative_bias():
    spec = _tw(
        _layers(
            "Decoder",
            residual_attn=True,
            rel_pos_bias=True,
            attn_num_mem_kv=2,
            attn_pre_talking_heads=True,
            attn_softclamp_logits=True,
            attn_logit_softclamp_value=2.0,
        )
    )
    ref, ours = paired(spec)
    tokens = _tokens(2, 6, seed=1)
    with torch.no_grad():
        assert_close(ref(tokens), ours(tokens), "logits")
        assert_close(
            ref(tokens, mask=seeded_mask(2, 6, seed=2)), ours(tokens, mask=seeded_mask(2, 6, seed=2))
        )


# ---------------------------------------------------------------------------------------------- combinations


@st.composite
def attention_options(draw: st.DrawFn) -> dict[str, Any]:
    """A random combination of attention options that x-transformers 2.31.10 can build together."""
    options: dict[str, Any] = {}
    kind = draw(st.sampled_from(("softmax", "sigmoid", "hard", "l2_distance", "sparse_topk", "cog")))
    if kind == "sparse_topk":
        options["sparse_topk"] = draw(st.integers(1, 4))
        options["sparse_topk_straight_through"] = draw(st.booleans())
    elif kind == "cog":
        options["cog_signed"] = True
    elif kind != "softmax":
        options[kind] = True
    kv_heads = draw(st.sampled_from((1, 2)))
    if kv_heads == 1:
        options["kv_heads"] = 1
    flags = (
        "pre_talking_heads",
        "post_talking_heads",
        "pre_scale_post_talking_heads",
        "head_scale",
        "gate_value_heads",
        "add_zero_kv",
        "head_learned_sink",
        "qk_norm",
        "on_attn",
        "laser",
    )
    for flag in draw(st.lists(st.sampled_from(flags), max_size=4, unique=True)):
        options[flag] = True
    if draw(st.booleans()):
        options["num_mem_kv"] = draw(st.integers(1, 3))
    if draw(st.booleans()):
        options["max_attend_past"] = draw(st.integers(0, 3))
    if draw(st.booleans()):
        options["softclamp_logits"], options["logit_softclamp_value"] = (
            True,
            draw(st.sampled_from((0.5, 5.0))),
        )
    norm = draw(st.sampled_from(("none", "qk_rmsnorm", "k_rmsnorm", "value_rmsnorm")))
    if norm != "none" and not (norm == "value_rmsnorm" and kv_heads == 1):
        options[norm] = True
    if draw(st.booleans()):
        options["gate_values"] = True
        options["gate_values_headwise"] = draw(st.booleans())
        options["swiglu_values"] = draw(st.booleans())
    if draw(st.booleans()):
        options["output_gate"] = True
        options["output_gate_headwise"] = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:
        options["use_latent_kv"], options["dim_latent_kv"] = True, 8
    return options


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(options=attention_options(), position=st.sampled_from(("none", "rotary", "alibi", "rel_pos")))
def test_random_option_combinations_match_with_mask_and_cache(options, position):
    layers = _layers("Decoder", **_prefixed("attn_", options))
    if position == "rotary":
        layers["rotary_pos_emb"] = True
    elif position != "none":
        layers[f"{position}_pos_bias" if position == "alibi" else "rel_pos_bias"] = True
    ref, ours = paired_or_reject(_tw(layers))
    _assert_decoder_parity(ref, ours, seq=6)


# ---------------------------------------------------------------------------------------------- training mode

TRAINING_OPTIONS = [
    "hard",
    "sparse_topk_straight_through",
    "num_mem_kv",
    "pre_scale_post_talking_heads",
    "laser",
]


@pytest.mark.parametrize("name", TRAINING_OPTIONS)
def test_training_mode_outputs_and_gradients_match(name):
    ref, ours = paired(_tw(_layers("Decoder", **_prefixed("attn_", OPTIONS[name]))))
    ref.train(), ours.train()
    tokens = _tokens(2, 6, seed=1)
    mask = seeded_mask(2, 6, seed=2)
    ref_out, our_out = ref(tokens, mask=mask), ours(tokens, mask=mask)
    assert_close(ref_out, our_out, "training-mode logits")
    ref_out.square().mean().backward()
    our_out.square().mean().backward()
    ref_grads = dict(ref.named_parameters())
    for param_name, param in ours.named_parameters():
        if ref_grads[param_name].grad is None:
            assert param.grad is None or not param.grad.any(), param_name
            continue
        assert_close(ref_grads[param_name].grad, param.grad, f"gradient of {param_name}", atol=1e-4)


def test_sublayer_dropout_matches_in_training_under_the_same_seed():
    ref, ours = paired(_tw(_layers("Decoder", attn_sublayer_dropout=0.3)))
    ref.train(), ours.train()
    tokens = _tokens(2, 6, seed=1)
    torch.manual_seed(5)
    expected = ref(tokens)
    torch.manual_seed(5)
    actual = ours(tokens)
    assert_close(expected, actual, "training-mode logits")
    with torch.no_grad():
        assert (actual - ours.eval()(tokens)).abs().max() > 1e-3  # the dropout did act in training


def test_zero_init_output_zeroes_the_output_projection():
    torch.manual_seed(0)
    model = xtf_core.build(_tw(_layers("Encoder", attn_zero_init_output=True)))
    assert not model.attn_layers.layers[0][1].to_out.weight.any()


# ---------------------------------------------------------------------------------------------- standalone Attention


def _attention_pair(**kwargs: Any) -> tuple[torch.nn.Module, Attention]:
    torch.manual_seed(0)
    ref = xt_module.Attention(DIM, **kwargs)
    ours = Attention(DIM, **kwargs)
    ref_state = ref.state_dict()
    assert {k: tuple(v.shape) for k, v in ref_state.items()} == {
        k: tuple(v.shape) for k, v in ours.state_dict().items()
    }
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for key in sorted(ref_state):
            ref_state[key].add_(torch.randn(ref_state[key].shape, generator=gen) * 0.1)
    ours.load_state_dict(ref_state, strict=True)
    return ref.eval(), ours.eval()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"heads": 2, "dim_head": 8, "dim_out": 12},
        {"heads": 1, "dim_head": 8, "project_out": True},
        {"heads": 1, "dim_head": 8, "on_attn": True},
        {"heads": 2, "dim_head": 8, "output_proj_depth": 3},
        {"heads": 2, "dim_head": 8, "dim_context": 12, "num_mem_kv": 2, "value_dim_head": 8},
        {"heads": 4, "dim_head": 8, "rotate_num_heads": 2, "causal": True},
    ],
    ids=[
        "dim_out",
        "project_out",
        "on_attn_one_head",
        "output_proj_depth",
        "dim_context+mem_kv",
        "rotate_num_heads",
    ],
)
def test_standalone_attention_parity(kwargs):
    ref, ours = _attention_pair(**kwargs)
    x = seeded_randn(2, 5, DIM, seed=1)
    mask = seeded_mask(2, 5, seed=2)
    call: dict[str, Any] = {"mask": mask}
    if "dim_context" in kwargs:
        call = {
            "context": seeded_randn(2, 4, kwargs["dim_context"], seed=3),
            "context_mask": seeded_mask(2, 4, seed=4),
        }
    if "rotate_num_heads" in kwargs:
        call["rotary_pos_emb"] = xt_module.RotaryEmbedding(4)(torch.arange(5))
    with torch.no_grad():
        expected = ref(x, **call)
        actual, _ = ours(x, **call)
    assert_close(expected, actual, "attention output")


def test_qkv_from_three_views_parity():
    """`qkv_receive_diff_residuals`: x stacks the query, key and value inputs ([3, b, n, d])."""
    ref, ours = _attention_pair(
        heads=2, dim_head=8, causal=True, qkv_receive_diff_residuals=True, num_mem_kv=0
    )
    views = seeded_randn(3, 2, 5, DIM, seed=1)
    mask = seeded_mask(2, 5, seed=2)
    with torch.no_grad():
        assert_close(ref(views, mask=mask), ours(views, mask=mask)[0], "attention output")
    with pytest.raises(UnsupportedOptionError, match="qkv_receive_diff_residuals"):
        ours(views, context=seeded_randn(2, 4, DIM, seed=3))


@pytest.mark.parametrize("kv_cache", [False, True], ids=["full", "kv_cache"])
def test_polar_positions_parity(kv_cache):
    ref, ours = _attention_pair(heads=2, dim_head=8, causal=True, value_rmsnorm=True, head_scale=True)
    polar = xt_module.PolarEmbedding(8, 2)
    with torch.no_grad():
        polar.learned_bias.uniform_(-1.0, 0.0)
    x = seeded_randn(2, 6, DIM, seed=1)
    emb = polar(torch.arange(6))
    with torch.no_grad():
        if not kv_cache:
            mask = seeded_mask(2, 6, seed=2)
            expected = ref(x, mask=mask, polar_pos_emb=emb)
            actual, _ = ours(x, mask=mask, polar_pos_emb=emb)
        else:
            _, ref_cache = ref(x[:, :5], polar_pos_emb=emb, return_intermediates=True)
            _, our_cache = ours(x[:, :5], polar_pos_emb=emb)
            expected = ref(x[:, 5:], polar_pos_emb=emb, cache=ref_cache)
            actual, _ = ours(x[:, 5:], polar_pos_emb=emb, cache=our_cache)
            assert_close(ref(x, polar_pos_emb=emb)[:, 5:], actual, "cached vs full")
    assert_close(expected, actual, "attention output with polar positions")


@pytest.mark.parametrize("learned", [False, True], ids=["fixed_mix", "learned_mix"])
def test_value_residual_input_parity(learned):
    ref, ours = _attention_pair(heads=2, dim_head=8, causal=True, learned_value_residual_mix=learned)
    x = seeded_randn(2, 5, DIM, seed=1)
    first = seeded_randn(2, 2, 5, 8, seed=2)  # the first layer's values, [b, kv_heads, n, dim_head]
    with torch.no_grad():
        expected, ref_inter = ref(x, value_residual=first, return_intermediates=True)
        actual, inter = ours(x, value_residual=first)
    assert_close(expected, actual, "attention output with value residual")
    assert_close(ref_inter.values, inter.values, "stored values")


def test_cross_attention_learned_value_residual_mix_layout():
    ref, ours = paired(_layers("Encoder", cross_attend=True, cross_attn_learned_value_residual_mix=True))
    assert "layers.1.1.to_value_residual_mix.0.weight" in ours.state_dict()
    x, context = seeded_randn(2, 5, DIM, seed=1), seeded_randn(2, 4, DIM, seed=2)
    with torch.no_grad():  # without add_value_residual the mix is built but not used
        assert_close(ref(x, context=context), ours(x, context=context))


# ---------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("spec", "option"),
    [
        (_layers("Decoder", attn_flash=True, attn_pre_talking_heads=True), "pre_talking_heads"),
        (_layers("Decoder", attn_flash=True, attn_sparse_topk=2), "sparse_topk"),
        (_layers("Decoder", attn_flash=True, attn_head_learned_sink=True), "head_learned_sink"),
        (_layers("Decoder", attn_flash=True, attn_softclamp_logits=True), "softclamp_logits"),
        (_layers("Decoder", attn_sigmoid=True, attn_hard=True), "sigmoid"),
        (_layers("Decoder", attn_sparse_topk=2, attn_l2_distance=True), "sparse_topk"),
        (_layers("Decoder", attn_qk_rmsnorm=True, attn_k_rmsnorm=True), "k_rmsnorm"),
        (
            _layers(
                "Decoder", attn_gate_values=True, attn_gate_values_headwise=True, attn_gate_values_rank=2
            ),
            "rank",
        ),
        (
            _layers(
                "Decoder", attn_output_gate=True, attn_output_gate_headwise=True, attn_output_gate_rank=2
            ),
            "rank",
        ),
        (_layers("Encoder", attn_selective=True), "selective"),
        (_layers("Decoder", attn_kv_heads=1, attn_value_rmsnorm=True), "value_rmsnorm"),
        (_layers("Decoder", attn_num_mem_kv=2, attn_value_dim_head=4), "num_mem_kv"),
        (_layers("Decoder", attn_learned_value_residual_mix=True), "attn_learned_value_residual_mix"),
        (_layers("Decoder", attn_talking_heads=True), "attn_talking_heads"),
        (_layers("Encoder", attn_use_cope=True), "use_cope"),
        (_layers("Decoder", attn_use_cope=True, attn_cope_soft_onehot_pos=True), "cope_soft_onehot_pos"),
        (_layers("Decoder", attn_flash=True, attn_use_cope=True), "use_cope"),
        (_layers("Decoder", attn_latent_rope_subheads=1), "latent_rope_subheads"),
        (_layers("Decoder", attn_use_latent_kv=True), "use_latent_kv"),
        (_layers("Decoder", attn_use_rel_proj_pos_bias=True, attn_num_mem_kv=1), "use_rel_proj_pos_bias"),
        (
            _layers("Decoder", attn_data_dependent_alibi=True, attn_data_dependent_alibi_kwargs={"x": 1}),
            "kwargs",
        ),
        (_layers("Decoder", attn_flash_pack_seq=True), "attn_flash_pack_seq"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_refused_combinations_name_the_option(spec, option):
    with pytest.raises(UnsupportedOptionError, match=option):
        xtf_core.build(spec)


# ---------------------------------------------------------------------------------------------- save / load / verify

SAVED_SPEC = _tw(
    _layers(
        "Decoder",
        attn_num_mem_kv=2,
        attn_pre_talking_heads=True,
        attn_post_talking_heads=True,
        attn_head_scale=True,
        attn_value_rmsnorm=True,
        attn_max_attend_past=4,
        attn_gate_values=True,
        attn_gate_values_headwise=True,
        attn_output_gate=True,
        attn_head_learned_sink=True,
        attn_softclamp_logits=True,
    )
)


def test_save_load_verify_round_trip(tmp_path):
    from xtf_cli.cli import main

    ref, model = paired(SAVED_SPEC)
    path = tmp_path / "model.safetensors"
    xtf_core.save(model, path)
    loaded = xtf_core.load(path)
    tokens = _tokens(2, 7, seed=1)
    with torch.no_grad():
        assert_close(model(tokens), loaded(tokens), "loaded logits")
        assert_close(ref(tokens), loaded(tokens), "loaded logits vs reference")
    result = CliRunner().invoke(main, ["verify", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True


def test_plain_models_keep_the_sdpa_path():
    """A model with none of the options has no `attend.*` parameters and never computes logits itself."""
    torch.manual_seed(0)
    model = xtf_core.build(_tw(_layers("Decoder")))
    assert not any(".attend." in name for name in model.state_dict())
    blocks = [m for m in model.modules() if isinstance(m, Attention)]
    assert blocks and all(not block.attend.explicit for block in blocks)
