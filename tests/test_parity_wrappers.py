"""Wrapper options, training wrappers and building blocks against the real x-transformers 2.31.10.

Each case builds the smallest model both ways (`paired`: same state-dict names and shapes, the reference's
perturbed weights loaded into xtf with `strict=True`) and compares outputs within 1e-5. Random training
wrappers are compared under the same seeds (torch and Python's `random`).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from parity_configs import assert_close, paired, x_transformers, xt_module

import xtf_core

torch.set_num_threads(1)


def _layers(cls: str = "Encoder", **kw: Any) -> dict[str, Any]:
    return {"class": cls, "dim": 16, "depth": 1, "heads": 2, "attn_dim_head": 8, **kw}


def _tw(cls: str = "Encoder", layers: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return {
        "class": "TransformerWrapper",
        "num_tokens": 20,
        "max_seq_len": 16,
        "attn_layers": layers or _layers(cls),
        **kw,
    }


def _tokens(seed: int = 0, batch: int = 2, n: int = 7) -> torch.Tensor:
    return torch.randint(0, 20, (batch, n), generator=torch.Generator().manual_seed(seed))


def _mask(batch: int = 2, n: int = 7) -> torch.Tensor:
    mask = torch.ones(batch, n, dtype=torch.bool)
    mask[1, n - 2 :] = False
    return mask


TOKEN_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "l2norm_embed": (_tw(l2norm_embed=True), {}),
    "use_cls_token": (_tw(use_cls_token=True), {"mask": True}),
    "num_cls_tokens": (_tw(use_cls_token=True, num_cls_tokens=3), {}),
    "average_pool_embed": (_tw(average_pool_embed=True), {"mask": True}),
    "num_output_heads": (_tw(num_output_heads=3), {}),
    "squeeze_out_last_dim": (_tw(logits_dim=1, squeeze_out_last_dim=True), {}),
    "memory_tokens_interspersed_every": (
        _tw("Decoder", num_memory_tokens=2, memory_tokens_interspersed_every=3),
        {},
    ),
    "embed_num_tokens": (_tw(embed_num_tokens={"type": 3, "segment": 2}), {"embed_ids": True}),
    "emb_frac_gradient": (_tw(emb_frac_gradient=0.1), {}),
    "attn_z_loss_weight": (_tw(attn_z_loss_weight=0.5), {}),
    "attn_pool": (_tw(attn_pool=True), {"mask": True}),
    "attn_pool_depth": (_tw(attn_pool=True, attn_pool_depth=2, num_pooled_tokens=3), {}),
    "dim_pooled_tokens": (_tw(attn_pool=True, dim_pooled_tokens=16), {}),
    "mixture_of_softmax": (_tw(mixture_of_softmax=True, mixture_of_softmax_k=3), {}),
    "sigsoftmax_logits": (_tw(sigsoftmax_logits=True), {}),
    "add_continuous_pred_head": (
        _tw("Decoder", add_continuous_pred_head=True),
        {"return_next_embed_pred": True},
    ),
    "return_attn_z_loss": (_tw("Decoder"), {"return_attn_z_loss": True}),
    "return_logit_entropies": (_tw("Decoder"), {"return_logit_entropies": True}),
    "return_embeddings_and_intermediates": (_tw(), {"return_embeddings_and_intermediates": True}),
    "excise_prepend_embeds": (_tw(), {"prepend": True, "excise_prepend_embeds": True}),
    "attn_pool-decoder-intermediates": (_tw("Decoder", attn_pool=True), {"return_intermediates": True}),
    "shift_mem_down": (
        _tw("Decoder", _layers("Decoder", depth=3), max_mem_len=4, shift_mem_down=1),
        {"mems": True, "return_mems": True},
    ),
}


def _strip(out: Any, key: str) -> Any:
    """The comparable part of an output (tensors, or the named intermediates field)."""
    if isinstance(out, tuple) and len(out) == 2 and not isinstance(out[1], (torch.Tensor, tuple, list)):
        return out[0], _intermediate(out[1], key)
    return out


def _intermediate(inter: Any, key: str) -> Any:
    field = {
        "return_attn_z_loss": "attn_z_loss",
        "return_logit_entropies": "logit_entropies",
        "attn_pool-decoder-intermediates": "attn_pooled_tokens",
    }.get(key, "last_hidden")
    return getattr(inter, field)


@pytest.mark.parametrize("case", sorted(TOKEN_CASES))
def test_token_wrapper_option(case: str) -> None:
    spec, call = TOKEN_CASES[case]
    reference, ours = paired(spec)
    x = _tokens()
    kwargs: dict[str, Any] = {
        k: v for k, v in call.items() if k not in ("mask", "embed_ids", "prepend", "mems")
    }
    if call.get("mask"):
        kwargs["mask"] = _mask()
    if call.get("embed_ids"):
        kwargs["embed_ids"] = {"type": _tokens(1) % 3, "segment": _tokens(2) % 2}
    if call.get("prepend"):
        kwargs["prepend_embeds"] = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(3))
    if call.get("mems"):
        gen = torch.Generator().manual_seed(4)
        kwargs["mems"] = [torch.randn(2, 4, 16, generator=gen) for _ in range(3)]
    expected, got = reference(x, **kwargs), ours(x, **kwargs)
    assert_close(_strip(expected, case), _strip(got, case), case)


def test_emb_frac_gradient_scales_the_embedding_gradient() -> None:
    reference, ours = paired(_tw(emb_frac_gradient=0.25))
    x = _tokens()
    for model in (reference, ours):
        model.train()
        model(x).sum().backward()
    ref_grad, our_grad = reference.token_emb.emb.weight.grad, ours.token_emb.emb.weight.grad
    assert ref_grad is not None and our_grad is not None and float(our_grad.abs().sum()) > 0
    assert_close(ref_grad, our_grad, "token embedding gradient")


def test_continuous_probabilistic() -> None:
    spec = {
        "class": "ContinuousTransformerWrapper",
        "dim_in": 4,
        "dim_out": 3,
        "max_seq_len": 16,
        "probabilistic": True,
        "attn_layers": _layers("Decoder"),
    }
    reference, ours = paired(spec)
    x = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0))
    assert_close(reference(x), ours(x), "mean and variance")
    assert ours(x).shape == (2, 2, 5, 3)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"num_classes": 5},
        {"num_classes": 5, "num_register_tokens": 2, "post_emb_norm": True, "channels": 1},
    ],
)
def test_vit(options: dict[str, Any]) -> None:
    spec = {
        "class": "ViTransformerWrapper",
        "image_size": 8,
        "patch_size": 4,
        "attn_layers": _layers(),
        **options,
    }
    reference, ours = paired(spec)
    img = torch.randn(2, options.get("channels", 3), 8, 8, generator=torch.Generator().manual_seed(0))
    assert_close(reference(img), ours(img), "vit")
    if "num_classes" in options:
        assert_close(
            reference(img, return_logits_and_embeddings=True),
            ours(img, return_logits_and_embeddings=True),
            "both",
        )
        assert_close(reference(img, return_embeddings=True), ours(img, return_embeddings=True), "embeddings")


# ---------------------------------------------------------------------------------------------- training wrappers

DECODER = _tw("Decoder", _layers("Decoder", depth=2, rotary_pos_emb=True), use_abs_pos_emb=False)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"mask_prob": 0.3},
        {"add_attn_z_loss": True},
        {"ignore_index": 0, "pad_value": 1},
        {"looped_loss_slope": 10, "looped_exit_loss_weight": 0.5},
    ],
)
def test_autoregressive_loss(options: dict[str, Any]) -> None:
    reference, ours = paired({"class": "AutoregressiveWrapper", "net": DECODER, **options})
    x = _tokens(n=9)
    for kwargs in ({}, {"lens": torch.tensor([9, 5])}):
        torch.manual_seed(3)
        expected = reference(x, **kwargs)
        torch.manual_seed(3)
        assert_close(expected, ours(x, **kwargs), f"loss {kwargs}")


def test_autoregressive_next_embed_loss() -> None:
    net = {**DECODER, "add_continuous_pred_head": True}
    reference, ours = paired({"class": "AutoregressiveWrapper", "net": net, "next_embed_loss_weight": 0.5})
    assert_close(reference(_tokens(n=9)), ours(_tokens(n=9)), "loss with the next-embedding term")


def test_autoregressive_mixture_of_softmax_loss() -> None:
    net = {**DECODER, "mixture_of_softmax": True}
    reference, ours = paired({"class": "AutoregressiveWrapper", "net": net})
    assert_close(reference(_tokens(n=9)), ours(_tokens(n=9)), "nll loss")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"beams": 3, "return_beams_and_scores": True},
        {"beams": 2},
        {"beams": 2, "cache_kv": False},
        {"beams": 2, "prompt_lens": torch.tensor([3, 2])},
    ],
)
def test_beam_search(kwargs: dict[str, Any]) -> None:
    reference, ours = paired({"class": "AutoregressiveWrapper", "net": DECODER})
    prompts = _tokens(n=3)
    expected, got = reference.beam_search(prompts, 5, **kwargs), ours.beam_search(prompts, 5, **kwargs)
    if kwargs.get("return_beams_and_scores"):
        assert torch.equal(expected[0], got[0])
        assert_close(expected[1], got[1], "beam scores")
    else:
        assert torch.equal(expected, got)


def test_beam_search_unbatched_prompt() -> None:
    reference, ours = paired({"class": "AutoregressiveWrapper", "net": DECODER})
    prompt = _tokens(n=3)[0]
    assert torch.equal(reference.beam_search(prompt, 4, beams=2), ours.beam_search(prompt, 4, beams=2))


XL_NET = _tw(
    "Decoder",
    _layers("Decoder", depth=2, rotary_pos_emb=True),
    max_seq_len=4,
    max_mem_len=4,
    use_abs_pos_emb=False,
)


@pytest.mark.parametrize("options", [{}, {"tbptt_steps": 2}, {"ignore_index": 3}])
def test_xl_autoregressive_loss(options: dict[str, Any]) -> None:
    reference, ours = paired({"class": "XLAutoregressiveWrapper", "net": XL_NET, **options})
    x = _tokens(n=11)
    assert_close(reference(x), ours(x), "segment loss")


def test_xl_autoregressive_generate_greedy() -> None:
    reference, ours = paired({"class": "XLAutoregressiveWrapper", "net": XL_NET})
    prompt = _tokens(n=5)  # one whole segment builds memories; sampling stays inside the next segment
    expected = reference.generate(prompt, 3, temperature=0.0)
    assert torch.equal(expected, ours.generate(prompt, 3, temperature=0.0))


CONTINUOUS_NET = {
    "class": "ContinuousTransformerWrapper",
    "dim_in": 4,
    "dim_out": 4,
    "max_seq_len": 16,
    "attn_layers": _layers("Decoder", rotary_pos_emb=True),
    "use_abs_pos_emb": False,
}


@pytest.mark.parametrize(
    ("options", "probabilistic", "masked"),
    [
        ({}, False, False),
        ({"use_l1_loss": True}, False, True),
        ({"equal_loss_weight_batch": True}, False, True),
        ({}, True, False),
    ],
)
def test_continuous_autoregressive_loss(options: dict[str, Any], probabilistic: bool, masked: bool) -> None:
    net = {**CONTINUOUS_NET, "probabilistic": probabilistic}
    reference, ours = paired({"class": "ContinuousAutoregressiveWrapper", "net": net, **options})
    x = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(0))
    kwargs = {"mask": _mask(2, 6)} if masked else {}
    assert_close(reference(x, **kwargs), ours(x, **kwargs), "loss")


@pytest.mark.parametrize("probabilistic", [False, True])
def test_continuous_autoregressive_generate(probabilistic: bool) -> None:
    net = {**CONTINUOUS_NET, "probabilistic": probabilistic}
    reference, ours = paired({"class": "ContinuousAutoregressiveWrapper", "net": net})
    start = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    expected = reference.generate(start, 3)
    torch.manual_seed(5)
    assert_close(expected, ours.generate(start, 3), "generated vectors")


NAR_NET = _tw(max_seq_len=8)


@pytest.mark.parametrize(
    "options",
    [
        {"no_replace_prob": 0.0, "random_token_prob": 0.0},
        {},
        {"schedule": "cosine", "use_simple_mdlm_loss_weight": False},
        {"self_cond": True, "self_cond_train_prob": 0.5},
        {"self_token_critic": True, "critic_loss_weight": 0.5},
    ],
)
def test_nonautoregressive_loss(options: dict[str, Any]) -> None:
    reference, ours = paired({"class": "NonAutoregressiveWrapper", "net": NAR_NET, "mask_id": 19, **options})
    x = _tokens(n=8)
    for seed in range(3):
        torch.manual_seed(seed)
        random.seed(seed)
        expected = reference(x, generator_sample_temperature=0.5)
        torch.manual_seed(seed)
        random.seed(seed)
        got = ours(x, generator_sample_temperature=0.5)
        assert_close(
            tuple(t for t in expected if t is not None), tuple(t for t in got if t is not None), "losses"
        )


@pytest.mark.parametrize("options", [{}, {"self_cond": True}, {"self_token_critic": True}])
def test_nonautoregressive_generate(options: dict[str, Any]) -> None:
    reference, ours = paired(
        {"class": "NonAutoregressiveWrapper", "net": NAR_NET, "mask_id": 19, "steps": 4, **options}
    )
    torch.manual_seed(0)
    expected = reference.generate(batch_size=2)
    torch.manual_seed(0)
    assert torch.equal(expected, ours.generate(batch_size=2))


# ---------------------------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "shape"),
    [
        ("Attention", (16,), {"heads": 2, "dim_head": 8, "causal": True}, (2, 5, 16)),
        ("Attention", (16,), {"heads": 4, "dim_head": 4, "kv_heads": 2, "gate_values": True}, (2, 5, 16)),
        ("FeedForward", (16,), {"mult": 2, "glu": True}, (2, 5, 16)),
        ("FeedForward", (16,), {"dim_out": 8, "relu_squared": True, "no_bias": True}, (2, 5, 16)),
        ("LayerNorm", (16,), {}, (2, 5, 16)),
        ("LayerNorm", (16,), {"unit_offset": True}, (2, 5, 16)),
        ("RMSNorm", (16,), {}, (2, 5, 16)),
        ("ScaleNorm", (16,), {}, (2, 5, 16)),
        ("SimpleRMSNorm", (16,), {}, (2, 5, 16)),
        ("AbsolutePositionalEmbedding", (16, 8), {}, (2, 5, 16)),
        ("AbsolutePositionalEmbedding", (16, 8), {"l2norm_embed": True}, (2, 5, 16)),
    ],
)
def test_block(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    reference = getattr(xt_module, name)(*args, **kwargs)
    ours = getattr(xtf_core, name)(*args, **kwargs)
    assert {k: v.shape for k, v in reference.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }
    with torch.no_grad():
        for tensor in reference.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape) * 0.1)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    assert_close(reference.eval()(x), ours.eval()(x), name)


def test_token_embedding_block() -> None:
    reference = xt_module.TokenEmbedding(16, 20, l2norm_embed=True)
    ours = xtf_core.TokenEmbedding(16, 20, l2norm_embed=True)
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert_close(reference(_tokens()), ours(_tokens()), "token embedding")


@pytest.mark.parametrize("xpos", [False, True])
def test_rotary_block(xpos: bool) -> None:
    reference, ours = xt_module.RotaryEmbedding(8, use_xpos=xpos), xtf_core.RotaryEmbedding(8, use_xpos=xpos)
    expected, got = reference.forward_from_seq_len(6), ours.forward_from_seq_len(6)
    assert_close(expected[0], got[0], "frequencies")
    t = torch.randn(2, 2, 6, 16, generator=torch.Generator().manual_seed(0))
    assert_close(
        xt_module.apply_rotary_pos_emb(t, *expected), xtf_core.apply_rotary_pos_emb(t, *got), "rotated"
    )


def test_alibi_and_relative_position_blocks() -> None:
    assert_close(
        xt_module.AlibiPositionalBias(2, 4)(5, 5),
        xtf_core.AlibiPositionalBias(2, 4)(5, 5, torch.device("cpu")),
        "alibi",
    )
    reference = xt_module.RelativePositionBias(scale=2.0, heads=2)
    ours = xtf_core.RelativePositionBias(scale=2.0, heads=2)
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert_close(reference(5, 5), ours(5, 5, torch.device("cpu")), "t5 bias")


def test_transformer_block() -> None:
    torch.manual_seed(0)
    reference = x_transformers.TransformerBlock(16, heads=2, attn_dim_head=8)
    ours = xtf_core.TransformerBlock(16, heads=2, attn_dim_head=8)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    assert_close(reference(x), ours(x), "block")
