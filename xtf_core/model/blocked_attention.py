"""Causal self-attention for training on the CPU: blocks of query rows that keep their probabilities.

PyTorch's CPU flash kernel saves only the output and the log-sum-exp, so its backward pass recomputes
every attention probability; on a CPU training step at a few hundred positions that is a large share.
Here each block of `BLOCK` query rows is multiplied with the keys it may see (never the masked upper
triangle), its softmax is kept for the backward pass (about half an n x n matrix per head), and the
backward pass is four batched matmuls per block with no recomputation.

It computes the function `F.scaled_dot_product_attention(q, k, v, is_causal=True)` computes, to float32
rounding, and is chosen only where it was measured faster (`applies`); everywhere else the caller keeps
the SDPA kernel. On the 2-core development VM, forward plus backward of one attention takes 0.65x to 0.9x
the flash kernel's time at 256 to 1024 positions (`benchmarks/bench_blocked_attention.py` re-measures
the bounds below on another machine), which is most of what puts xtf's CPU training step ahead of
x-transformers' (`benchmarks/bench_forward.py`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from .norms import compiling

BLOCK = 64  # query rows per block: 32 was no faster at the measured sizes, 128 slower
MIN_POSITIONS, MAX_POSITIONS = 256, 1024  # outside this range the flash kernel was as fast or faster
MIN_BATCH_FEATURES = 512  # batch x heads x head size below this: per-block overhead outweighs the saving
MIN_ROW_FEATURES = 16384  # positions x head size below this (256 x 32): thin matmuls, no saving measured
MAX_SAVED_BYTES = 64 * 2**20  # the probabilities one attention keeps for its backward pass, at most


def saved_bytes(batch_heads: int, positions: int) -> int:
    """Bytes of float32 probabilities kept for one attention: each block of rows against its visible keys."""
    total = 0
    for lo in range(0, positions, BLOCK):
        hi = min(lo + BLOCK, positions)
        total += (hi - lo) * hi
    return 4 * batch_heads * total


def applies(q: Tensor, k: Tensor, v: Tensor, dropout_p: float) -> bool:
    """Whether causal self-attention of `q, k, v [b, h, n, d]` takes the blocked path: float32 on the CPU
    with autograd recording, no dropout, no autocast, no torch.compile or torch.func transform (vmap, grad,
    ...) at work, and a size measured faster."""
    # cheapest first: in inference (most calls that get here) the first line decides
    if not torch.is_grad_enabled() or not (q.requires_grad or k.requires_grad or v.requires_grad):
        return False
    if dropout_p or q.device.type != "cpu" or compiling() or _cpu_autocast() or _functorch_active():
        return False
    if any(t.dtype != torch.float32 or t.ndim != 4 for t in (q, k, v)):
        return False
    b, h, n, d = q.shape
    if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        return False
    if not MIN_POSITIONS <= n <= MAX_POSITIONS or b * h * d < MIN_BATCH_FEATURES or n * d < MIN_ROW_FEATURES:
        return False
    return saved_bytes(b * h, n) <= MAX_SAVED_BYTES


def _cpu_autocast() -> bool:
    """Whether autocast is on for the CPU (it would run the blocked matmuls in lower precision)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled()


def _functorch_active() -> bool:
    """Whether a torch.func transform is running (the blocked function defines no transform rules)."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


def blocked_causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """`softmax(q k^T * scale + causal mask) v` for `q, k [b, h, n, d]`, `v [b, h, n, e]`: `[b, h, n, e]`."""
    return _BlockedCausal.apply(q, k, v, scale)


class _BlockedCausal(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        b, h, n, d = q.shape
        e = v.shape[-1]
        # the queries scaled once (one pass, which also lays them out for `bmm`), not every block's logits
        q3, k3, v3 = (q * scale).reshape(b * h, n, d), k.reshape(b * h, n, d), v.reshape(b * h, n, e)
        out = q.new_empty(b * h, n, e)
        above = torch.ones(BLOCK, BLOCK, dtype=torch.bool, device=q.device).triu_(
            1
        )  # a block's own keys it may not see
        probs = []
        for lo in range(0, n, BLOCK):
            hi = min(lo + BLOCK, n)
            logits = torch.bmm(q3[:, lo:hi], k3[:, :hi].transpose(1, 2))
            logits[:, :, lo:hi].masked_fill_(above[: hi - lo, : hi - lo], float("-inf"))
            p = logits.softmax(dim=-1)
            out[:, lo:hi] = torch.bmm(p, v3[:, :hi])
            probs.append(p)
        ctx.save_for_backward(q3, k3, v3, *probs)
        ctx.scale = scale
        ctx.shapes = (q.shape, v.shape)
        return out.view(b, h, n, e)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, d_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        q3, k3, v3, *probs = ctx.saved_tensors
        q_shape, v_shape = ctx.shapes
        n = q3.shape[1]
        d_out = d_out.reshape(v3.shape)
        dq, dk, dv = torch.empty_like(q3), torch.zeros_like(k3), torch.zeros_like(v3)
        for p, lo in zip(probs, range(0, n, BLOCK), strict=True):
            hi = lo + p.shape[1]
            rows = d_out[:, lo:hi]
            dv[:, :hi] += torch.bmm(p.transpose(1, 2), rows)
            d_p = torch.bmm(rows, v3[:, :hi].transpose(1, 2))
            d_logits = torch._softmax_backward_data(d_p, p, -1, p.dtype)
            dq[:, lo:hi] = torch.bmm(d_logits, k3[:, :hi])
            dk[:, :hi] += torch.bmm(d_logits.transpose(1, 2), q3[:, lo:hi])  # q3 holds the scaled queries
        return dq.mul_(ctx.scale).view(q_shape), dk.view(q_shape), dv.view(v_shape), None
