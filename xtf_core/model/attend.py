"""The attention kernel: scaled dot-product attention over boolean masks and additive biases.

Two paths compute the same function. `F.scaled_dot_product_attention` is used whenever the caller needs
neither the attention logits (residual attention) nor the attention maps; otherwise an explicit
softmax path runs. Rows whose every key is masked attend to nothing: their output is zero, and they
never produce NaN values or NaN gradients on either path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class AttentionIntermediates:
    """What one attention layer hands back: logits for residual attention, maps, and its key/value cache."""

    pre_softmax_attn: Tensor | None = None
    post_softmax_attn: Tensor | None = None
    cached_kv: tuple[Tensor, Tensor] | None = None
    layer_type: str | None = None
    extras: dict = field(default_factory=dict)


def causal_mask(i: int, j: int, device: torch.device) -> Tensor:
    """True where a query (the last `i` of `j` positions) may NOT see a key."""
    return torch.ones((i, j), device=device, dtype=torch.bool).triu(j - i + 1)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    mask: Tensor | None = None,
    causal: bool = False,
    attn_bias: Tensor | None = None,
    prev_attn: Tensor | None = None,
    need_logits: bool = False,
    float32_softmax: bool = True,
    dropout_p: float = 0.0,
) -> tuple[Tensor, AttentionIntermediates]:
    """Attention of `q [b, h, i, d]` over `k, v [b, h, j, d]`.

    `mask` (bool, broadcastable to `[b, h, i, j]`) is True where a key may be attended; `attn_bias` is
    added to the logits; `prev_attn` (residual attention) is added to the scaled logits first.
    """
    i, j = q.shape[-2], k.shape[-2]
    if i == 1 and causal:
        causal = False  # a single new query sees every cached key
    fast_causal = causal and i == j and mask is None and attn_bias is None and not need_logits
    fast_causal = fast_causal and prev_attn is None
    if fast_causal:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, dropout_p=dropout_p)
        return out, AttentionIntermediates()
    allowed = mask
    if causal:
        visible = ~causal_mask(i, j, q.device)
        allowed = visible if allowed is None else allowed & visible
    empty_rows = None
    if allowed is not None:
        allowed = allowed.expand(q.shape[0], q.shape[1], i, j)
        empty_rows = ~allowed.any(dim=-1, keepdim=True)

    if need_logits or prev_attn is not None:
        sim = (q @ k.transpose(-1, -2)) * scale
        if prev_attn is not None:
            sim = sim + prev_attn
        if attn_bias is not None:
            sim = sim + attn_bias
        if allowed is not None:
            sim = sim.masked_fill(~allowed, -torch.finfo(sim.dtype).max)
        attn = sim.softmax(dim=-1, dtype=torch.float32) if float32_softmax else sim.softmax(dim=-1)
        attn = attn.to(sim.dtype)
        out = F.dropout(attn, p=dropout_p) @ v if dropout_p > 0 else attn @ v
        inter = AttentionIntermediates(pre_softmax_attn=sim, post_softmax_attn=attn)
    else:
        sdpa_mask = None
        if allowed is not None:
            # a fully masked row would make softmax NaN: let it see everything, then zero it below
            sdpa_mask = allowed | empty_rows
        if attn_bias is not None:
            bias = attn_bias.to(q.dtype).expand(q.shape[0], q.shape[1], i, j)
            sdpa_mask = bias if sdpa_mask is None else bias.masked_fill(~sdpa_mask, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask, scale=scale, dropout_p=dropout_p)
        inter = AttentionIntermediates()

    if empty_rows is not None:
        out = out.masked_fill(empty_rows, 0.0)
    return out, inter
