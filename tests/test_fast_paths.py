"""The attention fast paths (one fused q/k/v projection, queries and keys rotated in one pass, in-place steps
without autograd) compute what the general path computes, train the same parameters, fall back where they
do not apply, and agree with x-transformers 2.31.10 in training as well as inference.

The general path is forced by a no-op forward hook on `to_q` (a hook must still run, so the fused matmul
is not taken): the same model, the same weights, two paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from parity_configs import assert_close, paired
from torch import nn

import xtf_core
from xtf_core.model.attention import Attention
from xtf_core.model.positions import apply_rotary, apply_rotary_to_qk


def _spec(**layers: Any) -> dict[str, Any]:
    attn_layers = {"class": "Decoder", "dim": 32, "depth": 2, "heads": 2, "attn_dim_head": 16, **layers}
    return {"class": "TransformerWrapper", "num_tokens": 64, "max_seq_len": 24, "attn_layers": attn_layers}


@contextmanager
def general_path(model: nn.Module) -> Iterator[None]:
    """Every attention of `model` takes the three separate projections while this is active."""
    handles = [
        module.to_q.register_forward_hook(lambda *_: None)
        for module in model.modules()
        if isinstance(module, Attention)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _fusable(model: nn.Module) -> int:
    """How many attentions of `model` would take the fused projection now."""
    return sum(isinstance(m, Attention) and m._fused_qkv_weight() is not None for m in model.modules())


def _train_step(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    logits = model(tokens)
    F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logits.detach(), grads


LAYER_OPTIONS = [
    {"rotary_pos_emb": True},
    {"rotary_pos_emb": True, "rotate_num_heads": 1},
    {"rotary_pos_emb": True, "attn_qk_norm": True},
    {"rotary_xpos": True},
    {"rotary_pos_emb": True, "rotary_emb_dim": 16},  # every feature of a head rotated: no pass-through
    {"alibi_pos_bias": True},
    {"rotary_pos_emb": True, "attn_kv_heads": 1},
    {"rotary_pos_emb": True, "attn_value_dim_head": 8},
    {"rotary_pos_emb": True, "attn_num_mem_kv": 2},
]


@pytest.mark.parametrize("layers", LAYER_OPTIONS, ids=lambda o: ",".join(o))
def test_fused_and_general_paths_agree_in_inference_and_training(layers: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = xtf_core.build(_spec(**layers))
    tokens = torch.randint(0, 64, (2, 24))
    model.eval()
    with torch.inference_mode():
        fast = model(tokens)
        with general_path(model):
            general = model(tokens)
    assert_close(general, fast, "inference output")
    with torch.no_grad():
        assert_close(general, model(tokens), "no_grad output")

    fast_logits, fast_grads = _train_step(model, tokens)
    with general_path(model):
        general_logits, general_grads = _train_step(model, tokens)
    assert_close(general_logits, fast_logits, "training output")
    assert fast_grads.keys() == general_grads.keys()
    assert {"to_q.weight", "to_k.weight", "to_v.weight"} <= {
        name.rsplit(".", 2)[-2] + ".weight" for name in fast_grads
    }
    for name, grad in general_grads.items():
        assert_close(grad, fast_grads[name], f"gradient of {name}")


def test_fused_path_is_taken_only_where_it_applies() -> None:
    plain = xtf_core.build(_spec(rotary_pos_emb=True))
    assert _fusable(plain) == 2
    for layers in ({"attn_kv_heads": 1}, {"attn_value_dim_head": 8}):
        assert _fusable(xtf_core.build(_spec(**layers))) == 0
    with general_path(plain):
        assert _fusable(plain) == 0
    # cross-attention: queries from x, keys and values from the context
    cross = xtf_core.build(_spec(cross_attend=True))
    tokens, context = torch.randint(0, 64, (2, 24)), torch.randn(2, 5, 32)
    with torch.inference_mode():
        fast = cross.eval()(tokens, context=context)
        with general_path(cross):
            assert_close(cross(tokens, context=context), fast, "cross-attention output")


def test_training_step_matches_x_transformers_parameter_by_parameter() -> None:
    """The benchmark's model (rotary decoder, flash): same logits and same gradient under every name."""
    spec = _spec(rotary_pos_emb=True, attn_flash=True)
    reference, ours = paired(spec)
    tokens = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(3))
    ref_logits, ref_grads = _train_step(reference, tokens)
    our_logits, our_grads = _train_step(ours, tokens)
    assert_close(ref_logits, our_logits, "training logits")
    assert ref_grads.keys() == our_grads.keys()
    assert any(name.endswith("to_q.weight") for name in our_grads)
    for name, grad in ref_grads.items():
        assert_close(grad, our_grads[name], f"gradient of {name}")


def test_decoding_with_a_cache_after_a_fused_prompt_matches_the_full_forward() -> None:
    torch.manual_seed(1)
    model = xtf_core.build(_spec(rotary_pos_emb=True)).eval()
    tokens = torch.randint(0, 64, (2, 20))
    with torch.inference_mode():
        full = model(tokens)
        _, cache = model(tokens[:, :12], return_intermediates=True)
        steps = []
        for i in range(12, 20):
            logits, cache = model(tokens[:, : i + 1], cache=cache, return_intermediates=True)
            steps.append(logits[:, -1])
    assert_close(full[:, 12:], torch.stack(steps, dim=1), "cached decoding")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("rot", [8, 16])
def test_rotating_queries_and_keys_together_equals_rotating_each(dtype: torch.dtype, rot: int) -> None:
    generator = torch.Generator().manual_seed(2)
    qk = torch.randn(2, 7, 2, 3, 16, generator=generator).to(dtype)
    freqs = torch.randn(1, 9, rot, generator=generator).repeat_interleave(2, dim=-1)[..., :rot]
    expected = [apply_rotary(qk[:, :, i].transpose(1, 2), freqs).transpose(1, 2) for i in range(2)]
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            together = apply_rotary_to_qk(qk.clone().requires_grad_(grad), freqs)
        assert together.dtype == dtype
        tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
        for i in range(2):
            assert torch.allclose(together[:, :, i].float(), expected[i].float(), atol=tol), (grad, i)


def test_in_place_steps_leave_returned_hiddens_intact() -> None:
    """Without autograd the GELU and the residual add write in place: every hidden state handed back must
    still equal the one computed with autograd (where nothing is written in place)."""
    torch.manual_seed(4)
    model = xtf_core.build(_spec(rotary_pos_emb=True)).eval()
    tokens = torch.randint(0, 64, (2, 24))
    with torch.no_grad():
        fast_out, fast = model(tokens, return_intermediates=True)
    slow_out, slow = model(tokens, return_intermediates=True)
    assert_close(slow_out.detach(), fast_out, "output")
    assert len(fast.hiddens) == len(slow.hiddens) > 0
    for i, (a, b) in enumerate(zip(slow.hiddens, fast.hiddens, strict=True)):
        assert_close(a.detach(), b, f"hidden {i}")
    for i, (a, b) in enumerate(zip(slow.attn_intermediates, fast.attn_intermediates, strict=True)):
        for part in range(2):
            assert_close(a.cached_kv[part].detach(), b.cached_kv[part], f"cached kv {i}.{part}")


def test_fast_paths_stay_off_the_gpu_and_under_hooks() -> None:
    model = xtf_core.build(_spec(rotary_pos_emb=True))
    attention = next(m for m in model.modules() if isinstance(m, Attention))
    assert attention._fused_qkv_weight() is not None
    handle = attention.to_v.register_forward_pre_hook(lambda *_: None)
    assert attention._fused_qkv_weight() is None
    handle.remove()
    attention.to("meta")  # any device but the CPU keeps the three projections
    assert attention._fused_qkv_weight() is None


def test_the_fused_path_compiles_whole_and_matches_eager() -> None:
    """torch.compile traces the fused projection (the in-place and complex steps step aside for it)."""
    torch._dynamo.reset()
    torch.manual_seed(5)
    model = xtf_core.build(_spec(rotary_pos_emb=True, attn_flash=True))
    assert _fusable(model) == 2
    tokens = torch.randint(0, 64, (2, 24))
    eager_logits, eager_grads = _train_step(model, tokens)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    logits, grads = _train_step(compiled, tokens)
    grads = {name.removeprefix("_orig_mod."): grad for name, grad in grads.items()}
    assert_close(eager_logits, logits, "compiled training output")
    assert grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        assert_close(grad, grads[name], f"compiled gradient of {name}")
    with torch.inference_mode():
        assert_close(model.eval()(tokens), compiled.eval()(tokens), "compiled inference output")
