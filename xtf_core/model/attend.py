"""The attention kernel: scaled dot-product attention over boolean masks and additive biases.

Two paths compute the same function. `F.scaled_dot_product_attention` is used whenever the caller needs
neither the attention logits (residual attention) nor the attention maps; otherwise an explicit
softmax path runs. Plain causal self-attention while training on the CPU may instead take the blocked
path of `blocked_attention`, where that was measured faster. Rows whose every key is masked attend to
nothing: their output is zero, and they never produce NaN values or NaN gradients on either path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NoReturn

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedOptionError
from .blocked_attention import applies as blocked_applies
from .blocked_attention import blocked_causal_attention


@dataclass
class AttentionIntermediates:
    """What one attention layer hands back: logits for residual attention, maps, and its key/value cache."""

    pre_softmax_attn: Tensor | None = None
    post_softmax_attn: Tensor | None = None
    cached_kv: tuple[Tensor, Tensor] | None = None
    layer_type: str | None = None
    # this layer's projected values before any value-residual mix (the first layer's feed `value_residual`)
    values: Tensor | None = None
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
    if fast_causal and blocked_applies(q, k, v, dropout_p):  # CPU training: see blocked_attention
        return blocked_causal_attention(q, k, v, scale), AttentionIntermediates()
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


def refuse(message: str) -> NoReturn:
    """Raise `UnsupportedOptionError`; an "attention option 'x'" message also names both keywords of x."""
    named = re.match(r"attention option '(\w+)'", message)
    if named:
        message += f" (keywords attn_{named[1]} / cross_attn_{named[1]})"
    raise UnsupportedOptionError(message)


def _softclamp(t: Tensor, value: float) -> Tensor:
    return (t / value).tanh() * value


def _one_hot_straight_through(logits: Tensor, dim: int) -> Tensor:
    """Forward: the one-hot argmax. Backward: the softmax's gradient."""
    soft = logits.softmax(dim=dim)
    hard = torch.zeros_like(logits).scatter(dim, logits.argmax(dim=dim, keepdim=True), 1.0)
    return hard + soft - soft.detach()


def _sparse_topk(logits: Tensor, k: int, dim: int, straight_through: bool) -> Tensor:
    """Softmax over the `k` largest (unmasked) logits along `dim`; all of them where there are fewer."""
    floor = -torch.finfo(logits.dtype).max
    k = min(k, logits.shape[dim])
    kth = logits.topk(k, dim=dim).values.narrow(dim, k - 1, 1)
    keep = (logits >= kth) & (logits > floor)
    attn = logits.masked_fill(~keep, floor).softmax(dim=dim)
    if not straight_through:
        return attn
    soft = logits.softmax(dim=dim)
    return attn.detach() + soft - soft.detach()


def _selective_gate(sim: Tensor) -> Tensor:
    """Selective attention (arXiv 2410.02703, sec. 3.3): each token may hide itself from later queries.

    The first head's positive logits, accumulated over earlier queries, are subtracted from every head.
    """
    i, j = sim.shape[-2:]
    gate = sim[:, 0].clamp(min=0).clone()
    gate[..., j - i] = 0.0  # the first key of this window never hides
    eye = torch.eye(i, device=sim.device, dtype=sim.dtype)
    if j > i:
        eye = F.pad(eye, (j - i, 0), value=1.0)
    gate = gate * (1.0 - eye)
    gate = F.pad(gate, (0, 0, 1, -1), value=0.0).cumsum(dim=-2)  # only queries after a token are affected
    return sim - gate[:, None]


class CoPE(nn.Module):
    """Contextual position encoding (arXiv 2405.18719, appendix B): positions counted by sigmoid gates over
    the keys after each one, interpolated from a learned table (`pos_emb`), added to the logits."""

    def __init__(
        self,
        dim: int,
        heads: int,
        max_pos: int,
        soft_onehot: bool = False,
        talking_heads: bool = False,
        soft_onehot_temp: float = 5e-2,
    ) -> None:
        super().__init__()
        self.max_pos, self.soft_onehot, self.soft_onehot_temp = max_pos, soft_onehot, soft_onehot_temp
        self.pos_emb = nn.Parameter(torch.zeros(max_pos, dim))
        self.talking_heads = nn.Conv2d(heads, heads, 1, bias=False) if talking_heads else None
        if soft_onehot:
            self.register_buffer("positions", torch.arange(max_pos))

    def forward(self, query: Tensor, logits: Tensor) -> Tensor:
        if self.talking_heads is not None:
            i, j = logits.shape[-2:]
            logits = self.talking_heads(logits).masked_fill(
                causal_mask(i, j, logits.device), -torch.finfo(logits.dtype).max
            )
        pos = logits.sigmoid().flip(-1).cumsum(dim=-1).flip(-1).clamp(max=self.max_pos - 1)
        per_position = query @ self.pos_emb.t()  # [b, h, i, max_pos]
        if self.soft_onehot:
            distance = (pos[..., None] - self.positions).abs()
            weights = (-distance / self.soft_onehot_temp).softmax(dim=-1)
            return (weights * per_position[..., None, :]).sum(dim=-1)
        floor, ceil = pos.floor().long(), pos.ceil().long()
        frac = pos - floor
        return per_position.gather(-1, ceil) * frac + per_position.gather(-1, floor) * (1 - frac)


# the options that need the explicit logits path
EXPLICIT_OPTIONS = (
    "pre_talking_heads",
    "post_talking_heads",
    "pre_scale_post_talking_heads",
    "sparse_topk",
    "softclamp_logits",
    "cog_signed",
    "sigmoid",
    "hard",
    "l2_distance",
    "head_learned_sink",
    "gumbel_softmax",
    "selective",
    "inverted_attention",
    "cope",
)


class Attend(nn.Module):
    """The attention kernel with its own options and parameters, under `attend.*` as in x-transformers.

    With none of `EXPLICIT_OPTIONS` set it holds no parameters and defers to `attend` (the SDPA path);
    otherwise it computes the logits explicitly, in x-transformers 2.31's order: scale, residual logits,
    talking heads, bias, soft clamp, masks, selective gate, learned sink, then the attention function.
    """

    def __init__(
        self,
        heads: int,
        *,
        causal: bool = False,
        pre_talking_heads: bool = False,
        post_talking_heads: bool = False,
        pre_scale_post_talking_heads: bool = False,
        sparse_topk: int | None = None,
        sparse_topk_straight_through: bool = False,
        softclamp_logits: bool = False,
        logit_softclamp_value: float = 50.0,
        cog_signed: bool = False,
        sigmoid: bool = False,
        hard: bool = False,
        l2_distance: bool = False,
        add_zero_kv: bool = False,
        head_learned_sink: bool = False,
        gumbel_softmax: bool = False,
        gumbel_softmax_temp: float = 1.0,
        gumbel_softmax_hard: bool = True,
        selective: bool = False,
        inverted_attention: bool = False,
        cope: CoPE | None = None,
    ) -> None:
        super().__init__()
        picked = [
            name
            for name, on in (
                ("sigmoid", sigmoid),
                ("hard", hard),
                ("l2_distance", l2_distance),
                ("gumbel_softmax", gumbel_softmax),
                ("sparse_topk", sparse_topk is not None),
            )
            if on
        ]
        if len(picked) > 1:
            keywords = ", ".join(f"attn_{name}" for name in picked)
            refuse(
                f"attention options {', '.join(picked)} ({keywords} or their cross_attn_ forms) exclude each other"
            )
        if selective and not causal:
            refuse("attention option 'selective' needs causal attention (a Decoder)")
        if softclamp_logits and logit_softclamp_value <= 0:
            refuse("attention option 'logit_softclamp_value' must be positive")
        if sparse_topk is not None and sparse_topk < 1:
            refuse("attention option 'sparse_topk' must be at least 1")
        self.cope = cope
        self.explicit = (
            sparse_topk is not None
            or cope is not None
            or any(
                (
                    pre_talking_heads,
                    post_talking_heads,
                    pre_scale_post_talking_heads,
                    softclamp_logits,
                    cog_signed,
                    sigmoid,
                    hard,
                    l2_distance,
                    head_learned_sink,
                    gumbel_softmax,
                    selective,
                    inverted_attention,
                )
            )
        )
        self.sparse_topk, self.sparse_topk_straight_through = sparse_topk, sparse_topk_straight_through
        self.softclamp_logits, self.logit_softclamp_value = softclamp_logits, logit_softclamp_value
        self.cog_signed, self.sigmoid, self.hard, self.l2_distance = cog_signed, sigmoid, hard, l2_distance
        self.add_zero_kv, self.selective, self.inverted = add_zero_kv, selective, inverted_attention
        self.gumbel = (gumbel_softmax_temp, gumbel_softmax_hard) if gumbel_softmax else None

        def mixer(on: bool) -> nn.Conv2d | None:
            if not on:
                return None
            conv = nn.Conv2d(heads, heads, 1, bias=False)
            nn.init.dirac_(conv.weight)
            return conv

        self.pre_softmax_talking_heads = mixer(pre_talking_heads)
        self.post_softmax_talking_heads = mixer(post_talking_heads)
        self.pre_scale_post_talking_heads = mixer(pre_scale_post_talking_heads)
        self.head_attn_sink = nn.Parameter(torch.zeros(heads)) if head_learned_sink else None

    def forward(
        self,
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
        row_mask: Tensor | None = None,
    ) -> tuple[Tensor, AttentionIntermediates]:
        if self.add_zero_kv:  # one all-zero key/value every query may attend (attention "off by one")
            k, v = F.pad(k, (0, 0, 1, 0)), F.pad(v, (0, 0, 1, 0))
            if mask is not None:
                mask = F.pad(mask, (1, 0), value=True)
            if attn_bias is not None:
                attn_bias = F.pad(attn_bias, (1, 0), value=0.0)
        if not self.explicit:
            return attend(
                q,
                k,
                v,
                scale=scale,
                mask=mask,
                causal=causal,
                attn_bias=attn_bias,
                prev_attn=prev_attn,
                need_logits=need_logits,
                float32_softmax=float32_softmax,
                dropout_p=dropout_p,
            )
        return self._explicit(
            q,
            k,
            v,
            scale=scale,
            mask=mask,
            causal=causal,
            attn_bias=attn_bias,
            prev_attn=prev_attn,
            float32_softmax=float32_softmax,
            dropout_p=dropout_p,
            row_mask=row_mask,
        )

    def _attn_fn(self, sim: Tensor, dim: int, float32_softmax: bool) -> Tensor:
        if self.sigmoid:
            return sim.sigmoid()
        if self.hard:
            return _one_hot_straight_through(sim, dim)
        if self.sparse_topk is not None:
            return _sparse_topk(sim, self.sparse_topk, dim, self.sparse_topk_straight_through)
        if self.gumbel is not None:
            tau, hard = self.gumbel
            return F.gumbel_softmax(sim, tau=tau, hard=hard, dim=dim)
        return sim.softmax(dim=dim, dtype=torch.float32) if float32_softmax else sim.softmax(dim=dim)

    def _explicit(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        scale: float,
        mask: Tensor | None,
        causal: bool,
        attn_bias: Tensor | None,
        prev_attn: Tensor | None,
        float32_softmax: bool,
        dropout_p: float,
        row_mask: Tensor | None,
    ) -> tuple[Tensor, AttentionIntermediates]:
        b, h, i = q.shape[:3]
        j = k.shape[-2]
        if i == 1 and causal:
            causal = False
        if self.l2_distance:
            dist = torch.cdist(q.flatten(0, 1), k.flatten(0, 1)) ** 2
            sim = -dist.unflatten(0, (b, h))
        else:
            sim = q @ k.transpose(-1, -2)
        sim = sim * scale
        if prev_attn is not None:
            sim = sim + prev_attn
        post_scale = None
        if self.pre_scale_post_talking_heads is not None:
            post_scale = self.pre_scale_post_talking_heads(sim)
        if self.pre_softmax_talking_heads is not None:
            sim = sim + self.pre_softmax_talking_heads(sim)
        if attn_bias is not None:
            sim = sim + attn_bias
        if self.softclamp_logits:
            sim = _softclamp(sim, self.logit_softclamp_value)
        sign = None
        if self.cog_signed:
            sign, sim = sim.sign(), sim.abs()

        floor = -torch.finfo(sim.dtype).max
        logit_mask = mask
        if self.inverted:  # attention normalised over queries: padding queries are masked instead of keys
            logit_mask = row_mask[:, None, :, None] if row_mask is not None else None
        if logit_mask is not None:
            sim = sim.masked_fill(~logit_mask, floor)
        if causal:
            sim = sim.masked_fill(causal_mask(i, j, q.device), floor)
        empty_rows = ~mask.any(dim=-1, keepdim=True) if mask is not None else None
        if self.cope is not None:
            sim = sim + self.cope(q, sim)
        if self.selective:
            sim = _selective_gate(sim)
        if self.head_attn_sink is not None:
            sink = self.head_attn_sink.to(sim.dtype)[None, :, None, None].expand(b, h, i, 1)
            if sign is not None:
                sign = torch.cat((sink.sign(), sign), dim=-1)
                sink = sink.abs()
            sim = torch.cat((sink, sim), dim=-1)

        dim = -2 if self.inverted else -1
        attn = self._attn_fn(sim, dim, float32_softmax)
        if self.inverted:
            if mask is not None:
                attn = attn.masked_fill(~mask, 0.0)
            attn = F.normalize(attn, p=1, dim=-1, eps=1e-8)
        attn = attn.to(sim.dtype)
        if sign is not None:
            attn = attn * sign
        inter = AttentionIntermediates(pre_softmax_attn=sim, post_softmax_attn=attn)
        if self.head_attn_sink is not None:
            attn = attn[..., 1:]
        if dropout_p > 0:
            attn = F.dropout(attn, p=dropout_p)
        if self.post_softmax_talking_heads is not None:
            attn = self.post_softmax_talking_heads(attn)
        if post_scale is not None:
            attn = attn * post_scale
        out = attn @ v
        if empty_rows is not None:
            out = out.masked_fill(empty_rows, 0.0)
        return out, inter
