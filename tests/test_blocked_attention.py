"""The blocked causal attention of CPU training computes what the SDPA kernel computes, forward and backward,
is taken exactly where `applies` says, and leaves a training step equal to x-transformers 2.31.10's."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from parity_configs import assert_close, paired

import xtf_core
import xtf_core.model.attend as attend_module
from xtf_core.model.blocked_attention import (
    BLOCK,
    MAX_SAVED_BYTES,
    applies,
    blocked_causal_attention,
    saved_bytes,
)


def _inputs(b: int, h: int, n: int, d: int, e: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(b, h, n, size, generator=generator, dtype=dtype).requires_grad_() for size in (d, d, e)
    ]


@pytest.mark.parametrize(
    "b, h, n, d, e",
    [
        (2, 2, 256, 32, 32),  # whole blocks
        (1, 3, 333, 16, 16),  # a last block of 13 rows
        (2, 1, 40, 8, 8),  # one block, shorter than BLOCK
        (1, 2, 200, 16, 24),  # value heads wider than query heads
    ],
)
def test_outputs_and_gradients_equal_the_sdpa_kernel(b: int, h: int, n: int, d: int, e: int) -> None:
    scale = d**-0.5 * 1.3  # a scale other than SDPA's default
    ours = _inputs(b, h, n, d, e, torch.float32, seed=n)
    theirs = [t.detach().clone().requires_grad_() for t in ours]
    grad = torch.randn(b, h, n, e, generator=torch.Generator().manual_seed(7))
    out = blocked_causal_attention(*ours, scale)
    expected = F.scaled_dot_product_attention(*theirs, is_causal=True, scale=scale)
    assert_close(expected, out, "output")
    out.backward(grad)
    expected.backward(grad)
    for name, a, b_ in zip("qkv", theirs, ours, strict=True):
        assert_close(a.grad, b_.grad, f"gradient of {name}")


def test_strided_inputs_as_the_fused_projection_hands_them() -> None:
    """q and k arrive as transposed views into one [b, n, 2, h, d] tensor, v as a view of another."""
    generator = torch.Generator().manual_seed(3)
    qk = torch.randn(2, 256, 2, 4, 16, generator=generator, requires_grad=True)
    v_base = torch.randn(2, 256, 4, 16, generator=generator, requires_grad=True)
    q, k = (t.transpose(1, 2) for t in qk.unbind(2))
    v = v_base.transpose(1, 2)
    out = blocked_causal_attention(q, k, v, 0.25)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.25)
    assert_close(expected, out, "output")
    ours = torch.autograd.grad(out.square().sum(), (qk, v_base))
    theirs = torch.autograd.grad(expected.square().sum(), (qk, v_base))
    for name, a, b in zip(("qk", "v"), theirs, ours, strict=True):
        assert_close(a, b, f"gradient of {name}")


def test_backward_passes_gradcheck_in_float64() -> None:
    """Analytical against numerical gradients, over two blocks (the second partly masked)."""
    q, k, v = _inputs(1, 2, BLOCK + 6, 4, 3, torch.float64, seed=5)
    assert torch.autograd.gradcheck(lambda q, k, v: blocked_causal_attention(q, k, v, 0.5), (q, k, v))


def _qkv(b: int, h: int, n: int, d: int, dtype: torch.dtype = torch.float32, grad: bool = True) -> list:
    return [torch.zeros(b, h, n, d, dtype=dtype, requires_grad=grad) for _ in range(3)]


def test_applies_only_to_float32_cpu_training_at_the_measured_sizes() -> None:
    assert applies(*_qkv(4, 4, 512, 64), dropout_p=0.0)
    assert applies(*_qkv(2, 4, 256, 64), dropout_p=0.0)
    assert not applies(*_qkv(4, 4, 512, 64, grad=False), dropout_p=0.0)  # nothing to differentiate
    with torch.no_grad():
        assert not applies(*_qkv(4, 4, 512, 64), dropout_p=0.0)
    assert not applies(*_qkv(4, 4, 512, 64), dropout_p=0.1)
    for dtype in (torch.float64, torch.bfloat16):
        assert not applies(*_qkv(4, 4, 512, 64, dtype=dtype), dropout_p=0.0)
    assert not applies(*_qkv(4, 4, 128, 64), dropout_p=0.0)  # too short: SDPA was as fast
    assert not applies(*_qkv(1, 1, 2048, 64), dropout_p=0.0)  # too long
    assert not applies(*_qkv(1, 2, 512, 64), dropout_p=0.0)  # too little work per block
    assert not applies(*_qkv(8, 8, 256, 32), dropout_p=0.0)  # thin matmuls
    assert applies(*_qkv(4, 4, 512, 32), dropout_p=0.0)
    q, k, v = _qkv(2, 4, 512, 64)
    assert not applies(q, k[:, :, :256], v[:, :, :256], dropout_p=0.0)  # not self-attention
    assert not applies(*_qkv(16, 8, 1024, 16), dropout_p=0.0)  # would keep more than MAX_SAVED_BYTES
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not applies(*_qkv(4, 4, 512, 64), dropout_p=0.0)
    assert saved_bytes(16 * 8, 1024) > MAX_SAVED_BYTES >= saved_bytes(4 * 4, 1024)
    assert saved_bytes(1, BLOCK + 1) == 4 * (BLOCK * BLOCK + BLOCK + 1)


def _count_blocked_calls(monkeypatch: pytest.MonkeyPatch) -> list[torch.Size]:
    """The query shapes of every call of the blocked path from now on (the calls still run it)."""
    calls = []

    def counted(*args: Any) -> torch.Tensor:
        calls.append(args[0].shape)
        return blocked_causal_attention(*args)

    monkeypatch.setattr(attend_module, "blocked_causal_attention", counted)
    return calls


def _spec(**layers: Any) -> dict[str, Any]:
    attn_layers = {"class": "Decoder", "dim": 64, "depth": 2, "heads": 4, "rotary_pos_emb": True, **layers}
    return {"class": "TransformerWrapper", "num_tokens": 64, "max_seq_len": 256, "attn_layers": attn_layers}


@pytest.mark.parametrize("layers", [{"attn_flash": True}, {}], ids=["flash", "default"])
def test_training_step_takes_the_blocked_path_and_matches_x_transformers(
    layers: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_blocked_calls(monkeypatch)
    reference, ours = paired(_spec(**layers))
    tokens = torch.randint(0, 64, (2, 256), generator=torch.Generator().manual_seed(9))
    results = []
    for model in (reference, ours):
        model.train()
        logits = model(tokens)
        F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        results.append((logits.detach(), grads))
    assert calls == [torch.Size([2, 4, 256, 64])] * 2  # both layers, and only in xtf
    (ref_logits, ref_grads), (our_logits, our_grads) = results
    assert_close(ref_logits, our_logits, "training logits")
    assert ref_grads.keys() == our_grads.keys()
    for name, grad in ref_grads.items():
        assert_close(grad, our_grads[name], f"gradient of {name}")
    calls.clear()
    with torch.no_grad():
        ours(tokens)
    assert not calls  # inference keeps the SDPA kernel


def test_compiled_training_keeps_the_sdpa_kernel_and_matches_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torch.compile the blocked path steps aside (the compiler traces one SDPA call) and the whole
    model still compiles as one graph; eager training took the blocked path."""
    calls = _count_blocked_calls(monkeypatch)
    torch._dynamo.reset()
    torch.manual_seed(11)
    model = xtf_core.build(_spec(attn_flash=True)).train()
    tokens = torch.randint(0, 64, (2, 256), generator=torch.Generator().manual_seed(12))

    def step(module: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = module(tokens)
        F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
        grads = {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in module.named_parameters()}
        module.zero_grad(set_to_none=True)
        return logits.detach(), grads

    eager_logits, eager_grads = step(model)
    assert len(calls) == 2
    logits, grads = step(torch.compile(model, fullgraph=True, backend="aot_eager"))
    assert len(calls) == 2
    assert_close(eager_logits, logits, "compiled training logits")
    for name, grad in eager_grads.items():
        assert_close(grad, grads[name], f"compiled gradient of {name}")


def test_torch_func_gradients_keep_the_sdpa_kernel_and_match_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-sample gradients and other torch.func transforms run through the SDPA kernel; eager training at
    the same size takes the blocked path, and both give the same gradients."""
    calls = _count_blocked_calls(monkeypatch)
    torch.manual_seed(13)
    model = xtf_core.build(_spec()).train()
    tokens = torch.randint(0, 64, (2, 256), generator=torch.Generator().manual_seed(14))
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = torch.func.functional_call(model, params, (tokens,))
        return F.cross_entropy(logits.flatten(0, 1), tokens.flatten())

    transformed = torch.func.grad(loss)(params)
    assert not calls
    F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
    assert len(calls) == 2
    for name, p in model.named_parameters():
        assert_close(p.grad, transformed[name], f"gradient of {name}")
