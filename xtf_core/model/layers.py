"""The attention stack (`AttentionLayers`, `Encoder`, `Decoder`, `CrossAttender`).

State-dict layout, as in x-transformers 2.31: `layers.{i}.0.{0,1,2}` are the pre-branch, post-branch
(sandwich) and post-main norms of block i, `layers.{i}.1` is the attention or feed-forward module (under
`.fn.` once per wrapper: macaron half-step, token shift, layer scale, branch scale), `layers.{i}.2` the
residual (`residual_scale`, or the `gru` of gated residuals); `final_norm`, `rotary_pos_emb.inv_freq`,
`rel_pos.*`, `adaptive_mlp.*`, `skip_combines.*` and `reinject_input_proj` sit beside them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SpecError, UnsupportedOptionError
from .attend import AttentionIntermediates
from .attention import Attention
from .feedforward import FeedForward
from .layer_plan import (
    LAYER_OPTIONS,
    LayerOptions,
    default_block_length,
    layer_types_for,
    layers_execute_order_for,
)
from .norms import (
    AdaptiveLayerNorm,
    AdaptiveRMSNorm,
    Derf,
    DynamicTanh,
    LayerNorm,
    RMSNorm,
    compiling,
    norm_class,
)
from .options import split_prefixed
from .positions import (
    AlibiPositionalBias,
    DynamicPositionBias,
    PolarEmbedding,
    RelativePositionBias,
    RotaryEmbedding,
)
from .spec_record import SpecRecorder


@dataclass
class LayerIntermediates:
    """What the stack returns with `return_hiddens=True`; also the key/value cache for decoding."""

    hiddens: list[Tensor] = field(default_factory=list)
    last_hidden: Tensor | None = None
    attn_intermediates: list[AttentionIntermediates] = field(default_factory=list)
    cache_length: int = 0
    mems: list[Tensor] | None = None
    memory_tokens: Tensor | None = None
    layer_hiddens: list[Tensor] = field(default_factory=list)  # each block's input, then the stack's output
    block_hiddens: list[Tensor] = field(default_factory=list)  # after each transformer block; last is final


# ---------------------------------------------------------------------------------------------- block parts


def _scale_first(out: Any, scale: Tensor | float) -> Any:
    """Scale a branch output (a tensor, or the first item of an attention block's `(out, inter)`)."""
    if isinstance(out, Tensor):
        return out * scale
    first, *rest = out
    return (first * scale, *rest)


def _add_residual(out: Tensor, residual: Tensor) -> Tensor:
    """`out + residual`. Without autograd (and eager), written into `out`, the branch's own fresh output,
    rather than into a new buffer: the same sum, one allocation fewer per block."""
    if (
        compiling()
        or torch.is_grad_enabled()
        or out.shape != residual.shape
        or out.dtype != residual.dtype
        or out.data_ptr() == residual.data_ptr()
    ):
        return out + residual
    return out.add_(residual)


# Options of which a stack may set at most one (checked before anything is built).
EXCLUSIVE_OPTIONS = (
    ("alibi_pos_bias", "rel_pos_bias", "dynamic_pos_bias"),
    (
        "use_scalenorm",
        "use_rmsnorm",
        "use_simple_rmsnorm",
        "use_dynamic_tanh",
        "use_derf",
        "use_adaptive_layernorm",
        "use_adaptive_rmsnorm",
    ),
    ("gate_residual", "orthog_residual", "mv_split_residual"),
    ("use_layerscale", "use_adaptive_layerscale"),
)


def _at_most_one(owner: str, options: LayerOptions, names: tuple[str, ...]) -> None:
    """A SpecError naming `names` when more than one of those options is set."""
    if sum(bool(getattr(options, name)) for name in names) > 1:
        raise SpecError(f"{owner}: choose at most one of {', '.join(names[:-1])} and {names[-1]}")


class Scale(nn.Module):
    """Multiply the wrapped block's output by a constant (macaron's half step, a float `scale_residual`)."""

    def __init__(self, scale: float, fn: nn.Module) -> None:
        super().__init__()
        self.scale = scale
        self.fn = fn

    def forward(self, x: Tensor, **kwargs: Any) -> Any:
        out = self.fn(x, **kwargs)
        return out if self.scale == 1.0 else _scale_first(out, self.scale)


def _shift(t: Tensor, amount: int, mask: Tensor | None) -> Tensor:
    if amount == 0:
        return t
    amount = min(amount, t.shape[1])  # x-transformers bounds by dim 1 (the batch, for stacked q/k/v views)
    if mask is not None:
        t = t.masked_fill(~mask[..., None], 0.0)
    return F.pad(t, (0, 0, amount, -amount))  # shift along the sequence (dim -2), zeros in


class ShiftTokens(nn.Module):
    """Shift feature groups along the sequence before the block: group k by `shifts[k]` positions."""

    def __init__(self, shifts: tuple[int, ...], fn: nn.Module) -> None:
        super().__init__()
        self.shifts = shifts
        self.fn = fn

    def forward(self, x: Tensor, **kwargs: Any) -> Any:
        mask = kwargs.get("mask")
        segments = len(self.shifts)
        parts = x.split(x.shape[-1] // segments, dim=-1)
        shifted = [_shift(t, amount, mask) for t, amount in zip(parts[:segments], self.shifts)]
        return self.fn(torch.cat((*shifted, *parts[segments:]), dim=-1), **kwargs)


class LayerScale(nn.Module):
    """Learned per-feature gain on the branch output; with `unit_offset` the stored `gamma` is gain - 1."""

    def __init__(self, fn: nn.Module, dim: int, init_value: float = 0.0, unit_offset: bool = False) -> None:
        super().__init__()
        self.fn = fn
        self.unit_offset = unit_offset
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value) - float(unit_offset)))

    def forward(self, x: Tensor, **kwargs: Any) -> Any:
        return _scale_first(self.fn(x, **kwargs), self.gamma + float(self.unit_offset))


class AdaptiveLayerScale(nn.Module):
    """Branch-output gain `sigmoid(to_gamma(condition))` (ada-LN-zero); starts near sigmoid(-2)."""

    def __init__(self, fn: nn.Module, dim: int, dim_condition: int, init_bias_value: float = -2.0) -> None:
        super().__init__()
        self.fn = fn
        self.to_gamma = nn.Linear(dim_condition, dim)
        nn.init.zeros_(self.to_gamma.weight)
        nn.init.constant_(self.to_gamma.bias, init_bias_value)

    def forward(self, x: Tensor, *, condition: Tensor, **kwargs: Any) -> Any:
        if condition.ndim == 2:
            condition = condition[:, None]
        return _scale_first(self.fn(x, **kwargs), self.to_gamma(condition).sigmoid())


class Residual(nn.Module):
    """`branch + residual`, the residual optionally scaled by a learned gain and a constant."""

    def __init__(
        self, dim: int, scale_residual: bool | float = False, scale_residual_constant: float = 1.0, **_: Any
    ) -> None:
        super().__init__()
        self.residual_scale = nn.Parameter(torch.ones(dim)) if scale_residual else None
        self.scale_residual_constant = scale_residual_constant

    def prepare(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """(branch input, residual, forward kwargs) for the stream `x`."""
        return x, x, {}

    def forward(self, x: Tensor, residual: Tensor, **_: Any) -> Tensor:
        if self.residual_scale is not None:
            residual = residual * self.residual_scale
        if self.scale_residual_constant != 1:
            residual = residual * self.scale_residual_constant
        return x + residual


class GRUGating(Residual):
    """A GRU cell merges the branch output (input) with the residual (hidden state), per position."""

    def __init__(self, dim: int, scale_residual: bool | float = False, **_: Any) -> None:
        super().__init__(dim, scale_residual)
        self.gru = nn.GRUCell(dim, dim)

    def forward(self, x: Tensor, residual: Tensor, **_: Any) -> Tensor:
        if self.residual_scale is not None:
            residual = residual * self.residual_scale
        out = self.gru(x.reshape(-1, x.shape[-1]), residual.reshape(-1, x.shape[-1]))
        return out.reshape_as(x)


class OrthogonalResidual(Residual):
    """Add only the part of the branch output orthogonal to the residual (each sample flattened to one
    vector, computed in float64 as x-transformers does)."""

    def __init__(self, dim: int, scale_residual: bool | float = False, **_: Any) -> None:
        super().__init__(dim, scale_residual)

    def forward(self, x: Tensor, residual: Tensor, **_: Any) -> Tensor:
        if self.residual_scale is not None:
            residual = residual * self.residual_scale
        flat_x, flat_r = x.reshape(x.shape[0], -1), residual.reshape(x.shape[0], -1)
        if x.device.type != "mps":
            flat_x, flat_r = flat_x.double(), flat_r.double()
        unit = F.normalize(flat_r, dim=-1)
        orthogonal = flat_x - (flat_x * unit).sum(dim=-1, keepdim=True) * unit
        return residual + orthogonal.reshape(x.shape).to(x.dtype)


def _masked_seq_mean(t: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return t.mean(dim=-2, keepdim=True)
    m = mask[..., None].expand_as(t)
    return (t * m).sum(dim=-2, keepdim=True) / m.sum(dim=-2, keepdim=True).clamp(min=1e-5)


class MVSplitResidual(Residual):
    """Mean/variance split update: `residual + (x - mean x) * beta + (mean x - mean residual) * alpha`, means
    over the (masked) sequence; alpha and beta are learned vectors, or Linear maps of mean x (`learned`)."""

    def __init__(
        self, dim: int, init_alpha: float = 0.0, init_beta: float = 0.03, learned: bool = False, **_: Any
    ) -> None:
        super().__init__(dim)
        self.learned = learned
        if learned:
            self.to_alpha = nn.Linear(dim, dim)
            self.to_beta = nn.Linear(dim, dim)
            for proj, init in ((self.to_alpha, init_alpha), (self.to_beta, init_beta)):
                nn.init.zeros_(proj.weight)
                nn.init.constant_(proj.bias, init)
        else:
            self.alpha = nn.Parameter(torch.full((dim,), float(init_alpha)))
            self.beta = nn.Parameter(torch.full((dim,), float(init_beta)))

    def forward(self, x: Tensor, residual: Tensor, mask: Tensor | None = None, **_: Any) -> Tensor:
        mean_x = _masked_seq_mean(x, mask)
        mean_residual = _masked_seq_mean(residual, mask)
        alpha = self.to_alpha(mean_x) if self.learned else self.alpha
        beta = self.to_beta(mean_x) if self.learned else self.beta
        return residual + (x - mean_x) * beta + (mean_x - mean_residual) * alpha


class GatedMultiResidual(Residual):
    """Gated residual streams: an elementwise low-rank read gate mixes the (RMS-normalised) streams into the
    branch input (`num_input_views` inputs for separate query/key/value); a per-stream write gate scales the
    branch output added back to each stream."""

    def __init__(
        self,
        dim: int,
        *,
        layer_index: int,
        num_residual_streams: int,
        read_gate_rank: int,
        num_input_views: int = 1,
    ) -> None:
        super().__init__(dim)
        streams = num_residual_streams
        self.num_residual_streams, self.num_input_views = streams, num_input_views
        self.read_norm = nn.RMSNorm(dim, elementwise_affine=False)
        self.read_gain = nn.Parameter(torch.ones(streams, dim))
        static_read = torch.zeros(num_input_views, streams, dim)
        static_read[:, layer_index % streams] = 1.0
        self.static_read_logit = nn.Parameter(static_read)
        self.static_write_logit = nn.Parameter(torch.zeros(streams))
        self.to_bottleneck = nn.Linear(dim * streams, read_gate_rank, bias=False)
        self.to_read_gate = nn.Linear(read_gate_rank, dim * streams * num_input_views, bias=False)
        self.to_write_gate = nn.Linear(read_gate_rank, streams, bias=False)
        nn.init.zeros_(self.to_read_gate.weight)
        nn.init.zeros_(self.to_write_gate.weight)
        self.dynamic_gate_scale = nn.Parameter(torch.ones(()) * 1e-2)

    def prepare(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Any]]:
        s, views = self.num_residual_streams, self.num_input_views
        bs, n, d = x.shape
        residuals = x.reshape(bs // s, s, n, d).transpose(1, 2)  # b n s d
        normed = self.read_norm(residuals) * self.read_gain
        dynamic = F.silu(self.to_bottleneck(normed.flatten(-2) / s)) * self.dynamic_gate_scale
        read_gate = (self.to_read_gate(dynamic) + self.static_read_logit.flatten()).sigmoid()
        read_gate = read_gate.unflatten(-1, (views, s, d)).movedim(-3, 0)  # v b n s d
        branch_input = (read_gate * normed).sum(dim=-2) / s
        beta = (self.to_write_gate(dynamic) + self.static_write_logit).sigmoid() * 2
        return (branch_input[0] if views == 1 else branch_input), residuals, {"beta": beta}

    def forward(self, x: Tensor, residual: Tensor, *, beta: Tensor, **_: Any) -> Tensor:  # type: ignore[override]
        streams = x[..., None, :] * beta[..., None] + residual  # b n s d
        b, n, s, d = streams.shape
        return streams.transpose(1, 2).reshape(b * s, n, d)


class AttentionResidual(nn.Module):
    """Attention over the inputs of every layer run so far (the latest one, low-rank adjusted, is the query);
    the block reads their weighted sum (`num_views` sums for separate query/key/value inputs)."""

    def __init__(self, dim: int, num_views: int = 1, lora_rank: int | None = None) -> None:
        super().__init__()
        rank = lora_rank if lora_rank is not None else 64
        if rank >= dim:
            raise SpecError(
                f"attn_aggregated_residual_kwargs lora_rank ({rank}) must be less than dim ({dim})"
            )
        self.scale = dim**-0.5
        self.num_views = num_views
        self.to_keys = nn.RMSNorm(dim)
        self.to_query = nn.Sequential(nn.RMSNorm(dim), _LowRank(dim, rank, dim * num_views))
        self.norm = nn.RMSNorm(dim)

    def forward(self, x: Tensor, hiddens: list[Tensor]) -> Tensor:
        stacked = torch.stack(hiddens)  # l b n d
        latest = stacked[-1]
        query_delta = self.to_query(latest).unflatten(-1, (self.num_views, -1)).movedim(-2, 0)  # v b n d
        query = self.norm(latest[None] + query_delta)
        keys = self.to_keys(stacked)
        weights = (torch.einsum("vbnd,lbnd->vlbn", query, keys) * self.scale).softmax(dim=1)
        out = torch.einsum("vlbn,lbnd->vbnd", weights, stacked)
        return out[0] if self.num_views == 1 else out


class DynamicLIMe(nn.Module):
    """Layer-integrated memory: the block reads a learned, input-dependent mix of the inputs of every layer
    so far (`num_views` mixes for separate query/key/value inputs)."""

    def __init__(self, dim: int, num_layers: int, num_views: int = 1, use_softmax: bool = True) -> None:
        super().__init__()
        self.num_layers, self.num_views = num_layers, num_views
        self.to_weights = nn.Sequential(
            RMSNorm(dim),
            nn.Linear(dim, num_views * num_layers),
            nn.Unflatten(-1, (num_views, num_layers)),
            nn.Softmax(dim=-1) if use_softmax else nn.ReLU(),
        )

    def forward(self, x: Tensor, hiddens: list[Tensor]) -> Tensor:
        if len(hiddens) != self.num_layers:
            raise ValueError(f"integrate_layers: expected {self.num_layers} layer inputs, got {len(hiddens)}")
        weights = self.to_weights(x).movedim(-2, 0)  # v b n l
        out = torch.einsum("lbnd,vbnl->vbnd", torch.stack(hiddens), weights)
        return out[0] if self.num_views == 1 else out


class _LowRank(nn.Module):
    """`up(down(x))`, `up` zero at init."""

    def __init__(self, dim: int, rank: int, dim_out: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim_out, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))


def _sinkhorn(t: Tensor, iters: int) -> Tensor:
    dtype = t.dtype
    t = t.float().softmax(dim=-2)
    for _ in range(iters):
        t = F.normalize(t, p=1, dim=-1)
        t = F.normalize(t, p=1, dim=-2)
    return t.to(dtype)


class HyperConnection(Residual):
    """Hyper-connections over `num_residual_streams` residual streams (dynamic form): the streams, stacked
    into the batch as `(b s)`, are mixed into the branch input (`num_input_views` of them for separate
    query/key/value inputs) and updated with a learned per-stream gain.

    The residual-mixing weights go through x-transformers 2.31.10's Sinkhorn step on a `[s, 1, s]` view,
    which makes every weight 1; this follows it.
    """

    def __init__(
        self,
        dim: int,
        *,
        layer_index: int,
        num_residual_streams: int,
        num_input_views: int = 1,
        sinkhorn_iters: int = 5,
    ) -> None:
        super().__init__(dim)
        streams = num_residual_streams
        self.num_residual_streams, self.num_input_views = streams, num_input_views
        self.sinkhorn_iters = sinkhorn_iters
        self.norm = nn.LayerNorm(dim, bias=False)
        self.static_beta = nn.Parameter(torch.ones(streams))
        init_alpha0 = torch.zeros(streams, num_input_views)
        init_alpha0[layer_index % streams, :] = 1.0
        self.static_alpha = nn.Parameter(torch.cat((init_alpha0, torch.eye(streams)), dim=1))
        self.dynamic_alpha_fn = nn.Parameter(torch.zeros(dim, streams + num_input_views))
        self.dynamic_alpha_scale = nn.Parameter(torch.ones(()) * 1e-2)
        self.dynamic_beta_fn = nn.Parameter(torch.zeros(dim))
        self.dynamic_beta_scale = nn.Parameter(torch.ones(()) * 1e-2)

    def prepare(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Any]]:
        s, views = self.num_residual_streams, self.num_input_views
        bs, n, d = x.shape
        residuals = x.reshape(bs // s, s, n, d).transpose(1, 2)  # b n s d
        normed = self.norm(residuals)
        alpha = normed @ self.dynamic_alpha_fn * self.dynamic_alpha_scale + self.static_alpha
        alpha_input, alpha_residual = alpha[..., :views].sigmoid(), alpha[..., views:]
        alpha_residual = _sinkhorn(alpha_residual.unflatten(-1, (-1, s)), self.sinkhorn_iters).flatten(-2)
        alpha = torch.cat((alpha_input, alpha_residual), dim=-1)
        dynamic_beta = (normed @ self.dynamic_beta_fn).sigmoid() * 2 * self.dynamic_beta_scale
        beta = (dynamic_beta + self.static_beta).sigmoid() * 2
        mixed = torch.einsum("...st,...sd->...td", alpha, residuals)
        if views == 1:
            return mixed[..., 0, :], mixed[..., 1:, :], {"beta": beta}
        return mixed[..., :views, :].movedim(-2, 0), mixed[..., views:, :], {"beta": beta}

    def forward(self, x: Tensor, residual: Tensor, *, beta: Tensor, **_: Any) -> Tensor:  # type: ignore[override]
        streams = x[..., None, :] * beta[..., None] + residual  # b n s d
        b, n, s, d = streams.shape
        return streams.transpose(1, 2).reshape(b * s, n, d)


class ConcatCombine(nn.Module):
    """U-Net skip: concatenate an earlier layer's input with the current one and project back to dim."""

    def __init__(self, dim: int, prev_layer_ind: int) -> None:
        super().__init__()
        self.prev_layer_ind = prev_layer_ind
        self.combine = nn.Linear(dim * 2, dim, bias=False)

    def forward(self, x: Tensor, prev_layers: list[Tensor]) -> Tensor:
        return self.combine(torch.cat((prev_layers[self.prev_layer_ind], x), dim=-1))


def dropout_seq(seq: Tensor, mask: Tensor | None, dropout: float) -> tuple[Tensor, Tensor | None]:
    """Keep a random subset of `1 - dropout` of the positions of `seq` (structured token dropout), in
    x-transformers' order of random draws."""
    b, n = seq.shape[:2]
    logits = torch.randn(b, n, device=seq.device)
    if mask is not None:
        logits = logits.masked_fill(~mask, -torch.finfo(logits.dtype).max)
    keep_prob = 1.0 - dropout
    num_keep = max(1, int(keep_prob * n))
    keep = logits.topk(num_keep, dim=1).indices
    rows = torch.arange(b, device=seq.device)[:, None]
    seq = seq[rows, keep]
    if mask is not None:
        keep_counts = torch.ceil(mask.sum(dim=-1) * keep_prob).int()
        mask = mask[rows, keep] & (torch.arange(num_keep, device=seq.device) < keep_counts[:, None])
    return seq, mask


def _repeat_blocks_order(repeat_blocks: Any, num_blocks: int, block_len: int) -> tuple[int, ...]:
    """x-transformers' `repeat_blocks=((start, end), repeats)` as an explicit layer execution order."""
    if isinstance(repeat_blocks, tuple) and len(repeat_blocks) == 2 and isinstance(repeat_blocks[1], int):
        repeat_blocks = (repeat_blocks,)
    groups: dict[int, tuple[int, int]] = {}
    for span, repeats in repeat_blocks:
        begin, end = span if isinstance(span, (tuple, list)) else (span, span)
        if begin > end:
            raise ValueError(f"repeat_blocks: start {begin} after end {end}")
        groups[begin] = (end, repeats)
    blocks: list[int] = []
    current = 0
    while current < num_blocks:
        if current not in groups:
            blocks.append(current)
            current += 1
            continue
        end, repeats = groups[current]
        if end >= num_blocks:
            raise ValueError(f"repeat_blocks: group ends at block {end}, but there are {num_blocks} blocks")
        blocks.extend(list(range(current, end + 1)) * repeats)
        current = end + 1
    return tuple(i for blk in blocks for i in range(blk * block_len, (blk + 1) * block_len))


# Forward keywords of x-transformers 2.31.10's AttentionLayers that xtf does not implement, with the value at
# which they change nothing.
REFUSED_FORWARD_KWARGS: dict[str, Any] = {
    "return_gumbel_log_probs": False,
    "rotary_pos_emb": None,
    "polar_pos_emb": None,
    "attn_bias": None,
    "self_attn_additional_kv": None,
    "additional_kv_mask": None,
    "detach_additional_kv": False,
    "route_additional_kv_to_top": True,
    "self_attn_kv_residuals": None,
    "cross_attn_kv_residuals": None,
    "flash_pack_seq_kwargs": None,
    "flash_pack_seq_context_kwargs": None,
}


def _refuse_forward_kwargs(owner: str, kwargs: dict[str, Any]) -> None:
    for key, value in kwargs.items():
        if key not in REFUSED_FORWARD_KWARGS:
            raise TypeError(f"{owner}.forward() got an unexpected keyword argument '{key}'")
        neutral = REFUSED_FORWARD_KWARGS[key]
        if value is neutral or (isinstance(value, bool) and value == neutral):
            continue
        raise UnsupportedOptionError(
            f"{owner}.forward: keyword '{key}' is not supported by the xtf core; leave it at {neutral!r}"
        )


# ---------------------------------------------------------------------------------------------- the stack


class AttentionLayers(SpecRecorder, nn.Module):
    def __init__(self, dim: int | None = None, depth: int | None = None, **kwargs: Any) -> None:
        super().__init__()
        if dim is not None:
            kwargs["dim"] = dim
        if depth is not None:
            kwargs["depth"] = depth
        self._record_spec(kwargs)
        owner = type(self).__name__
        if "dim" not in kwargs:
            raise SpecError(f"{owner}: 'dim' is required")
        layer_kwargs = {k: v for k, v in kwargs.items() if k in LAYER_OPTIONS}
        attn_kwargs, cross_kwargs, ff_kwargs = split_prefixed(
            owner, {k: v for k, v in kwargs.items() if k not in LAYER_OPTIONS}, LAYER_OPTIONS
        )
        for key in ("custom_layers", "layers_execute_order", "shift_tokens", "layer_dropout"):
            if isinstance(layer_kwargs.get(key), list):
                layer_kwargs[key] = tuple(layer_kwargs[key])
        o = LayerOptions(**layer_kwargs)
        self.options = o
        self.dim, self.causal, self.cross_attend = o.dim, o.causal, o.cross_attend
        rotary = o.rotary_pos_emb or o.rotary_xpos
        dim_head = attn_kwargs.get("dim_head", 64)
        self.attn_heads, self.attn_dim_head = o.heads, dim_head
        self.disable_abs_pos_emb = (
            o.disable_abs_pos_emb
            if o.disable_abs_pos_emb is not None
            else (o.rel_pos_bias or rotary or o.polar_pos_emb)
        )
        if rotary and o.polar_pos_emb:
            raise SpecError(f"{owner}: choose at most one of rotary_pos_emb and polar_pos_emb")
        # separate query/key/value inputs for self-attention: made by hyper-connection or gated streams, by
        # aggregated residuals, or by layer integration (which always uses them)
        qkv_views = o.qkv_receive_diff_residuals or o.integrate_layers
        self.produce_views = qkv_views and not o.integrate_layers
        if o.integrate_layers and o.attn_aggregated_residuals:
            raise UnsupportedOptionError(
                f"{owner}: option 'integrate_layers' cannot be combined with attn_aggregated_residuals in xtf"
            )
        if self.produce_views:
            producers = (o.num_residual_streams > 1 or o.gated_multi_residual, o.attn_aggregated_residuals)
            if sum(producers) != 1:
                raise SpecError(
                    f"{owner}: qkv_receive_diff_residuals needs one source of views: residual streams "
                    "(num_residual_streams > 1 or gated_multi_residual) or attn_aggregated_residuals"
                )
        for exclusive in EXCLUSIVE_OPTIONS:
            _at_most_one(owner, o, exclusive)
        if o.num_residual_streams < 1:
            raise SpecError(f"{owner}: num_residual_streams must be at least 1")
        if o.num_residual_streams > 1 and (o.gate_residual or o.orthog_residual or o.mv_split_residual):
            raise SpecError(
                f"{owner}: hyper-connections (num_residual_streams > 1) replace the residual update"
            )
        self.num_residual_streams = o.num_residual_streams
        self.stream_emb = (
            nn.Parameter(torch.zeros(o.num_residual_streams, o.dim)) if o.num_residual_streams > 1 else None
        )
        if o.use_dynamic_tanh and not o.pre_norm:
            raise SpecError(f"{owner}: use_dynamic_tanh needs pre_norm=True")
        if o.rotary_xpos and not o.causal:
            raise SpecError(f"{owner}: rotary_xpos needs causal attention (a Decoder)")
        if o.sandwich_norm and not o.pre_norm:
            raise SpecError(f"{owner}: sandwich_norm needs pre_norm=True")
        if attn_kwargs.get("flash") and (
            o.residual_attn or o.cross_residual_attn or o.rel_pos_bias or o.dynamic_pos_bias
        ):
            raise SpecError(
                f"{owner}: attn_flash cannot be combined with residual attention, rel_pos_bias or dynamic_pos_bias"
            )
        if o.only_attn and (o.layers_execute_order is not None or o.unet_skips):
            raise SpecError(f"{owner}: only_attn cannot be combined with layers_execute_order or unet_skips")
        if o.layers_execute_order is not None and o.custom_layers is not None and o.depth is not None:
            raise SpecError(f"{owner}: do not pass depth with custom_layers and layers_execute_order")

        rotary_dim = o.rotary_emb_dim if o.rotary_emb_dim is not None else dim_head // 2
        if rotary_dim > dim_head:
            raise SpecError(f"{owner}: rotary_emb_dim {rotary_dim} exceeds the head dimension {dim_head}")
        self.rotary_pos_emb = (
            RotaryEmbedding(
                rotary_dim,
                use_xpos=o.rotary_xpos,
                scale_base=o.rotary_xpos_scale_base,
                interpolation_factor=o.rotary_interpolation_factor,
                base_rescale_factor=o.rotary_base_rescale_factor,
            )
            if rotary
            else None
        )
        self.polar_pos_emb = (
            PolarEmbedding(dim_head, o.heads, o.polar_bias_uniform_init) if o.polar_pos_emb else None
        )
        self.rel_pos: nn.Module | None = None
        if o.rel_pos_kwargs and not o.alibi_pos_bias:
            raise UnsupportedOptionError(
                f"{owner}: option 'rel_pos_kwargs' is supported with alibi_pos_bias only (its 'slopes')"
            )
        if o.rel_pos_bias:
            if o.rel_pos_num_buckets > o.rel_pos_max_distance:
                raise SpecError(f"{owner}: rel_pos_num_buckets must not exceed rel_pos_max_distance")
            self.rel_pos = RelativePositionBias(
                scale=dim_head**0.5,
                causal=o.causal,
                heads=o.heads,
                num_buckets=o.rel_pos_num_buckets,
                max_distance=o.rel_pos_max_distance,
            )
        elif o.dynamic_pos_bias:
            self.rel_pos = DynamicPositionBias(
                o.dim // 4,
                heads=o.heads,
                depth=o.dynamic_pos_bias_mlp_depth,
                log_distance=o.dynamic_pos_bias_log_distance,
                norm=o.dynamic_pos_bias_norm,
            )
        elif o.alibi_pos_bias:
            alibi_heads = o.alibi_num_heads if o.alibi_num_heads is not None else o.heads
            if alibi_heads > o.heads:
                raise SpecError(f"{owner}: alibi_num_heads ({alibi_heads}) exceeds heads ({o.heads})")
            slopes = o.rel_pos_kwargs.get("slopes")  # x-transformers' ALiBi ignores any other key
            self.rel_pos = AlibiPositionalBias(alibi_heads, o.heads, slopes=slopes)

        # normalisation (adaptive norms read a condition; the others store their gains with a unit offset)
        # the block pre-norm: gated multi-residual streams normalise in their read gate instead
        pre_norm = o.pre_norm and not o.gated_multi_residual
        self.norm_need_condition = o.use_adaptive_layernorm or o.use_adaptive_rmsnorm
        self.dim_condition = o.dim_condition if o.dim_condition is not None else o.dim
        dim_condition_inner = self.dim_condition * (
            o.adaptive_condition_mlp_expansion if o.adaptive_condition_mlp else 1
        )
        norm_cls = norm_class(
            use_rmsnorm=o.use_rmsnorm, use_scalenorm=o.use_scalenorm, use_simple_rmsnorm=o.use_simple_rmsnorm
        )

        def make_norm(final: bool = False) -> nn.Module:
            if o.use_adaptive_layernorm:
                return AdaptiveLayerNorm(o.dim, dim_condition=dim_condition_inner)
            if o.use_adaptive_rmsnorm:
                return AdaptiveRMSNorm(o.dim, dim_condition=dim_condition_inner)
            if o.use_dynamic_tanh:
                return DynamicTanh(
                    o.dim, init_alpha=o.dynamic_tanh_init_alpha, unit_offset=o.norm_add_unit_offset
                )
            if o.use_derf:
                return Derf(o.dim, unit_offset=o.norm_add_unit_offset)
            if norm_cls is LayerNorm or (final and o.xtf_final_norm_layernorm):
                return LayerNorm(o.dim, unit_offset=o.norm_add_unit_offset, bias=o.xtf_norm_bias)
            return norm_cls(o.dim, unit_offset=o.norm_add_unit_offset)

        self.post_branch_needs_condition = o.use_adaptive_layerscale
        self.need_condition = self.norm_need_condition or self.post_branch_needs_condition
        self.adaptive_mlp: nn.Module = nn.Identity()
        if self.need_condition and o.adaptive_condition_mlp:
            self.adaptive_mlp = nn.Sequential(
                nn.Linear(self.dim_condition, dim_condition_inner, bias=False), nn.SiLU()
            )

        self.layer_types = layer_types_for(o)
        self.layers_execute_order = layers_execute_order_for(o, len(self.layer_types))
        self.block_len = default_block_length(o)
        self.num_attn_layers = self.layer_types.count("a")
        if o.weight_tie_layers:
            self.depth = 1
        else:
            self.depth = o.depth if o.depth is not None else len(self.layers_execute_order)
        self.pre_norm, self.residual_attn, self.cross_residual_attn = (
            o.pre_norm or o.pre_and_post_norm,
            o.residual_attn,
            o.cross_residual_attn,
        )

        # residual branch scaling: a float depth_scale_residual / scale_residual scales every branch output;
        # a True depth_scale_residual only rescales the output projections at init
        residual_scale: float | None = None
        if o.attn_aggregated_residuals:
            residual_scale = 1.0
        elif isinstance(o.depth_scale_residual, (int, float)) and not isinstance(
            o.depth_scale_residual, bool
        ):
            residual_scale = float(o.depth_scale_residual)
        elif isinstance(o.scale_residual, (int, float)) and not isinstance(o.scale_residual, bool):
            residual_scale = float(o.scale_residual)
        depth_scaled_init = o.depth_scale_residual is True and not o.attn_aggregated_residuals
        aggregated_kwargs = dict(o.attn_aggregated_residual_kwargs)
        if aggregated_kwargs.get("lora_activation") is not None:
            raise UnsupportedOptionError(
                f"{owner}: option 'attn_aggregated_residual_kwargs' with a 'lora_activation' module is not supported"
            )
        unknown = set(aggregated_kwargs) - {"lora_rank", "lora_activation"}
        if unknown:
            raise UnsupportedOptionError(
                f"{owner}: option 'attn_aggregated_residual_kwargs' key {sorted(unknown)[0]!r} is not supported"
            )
        layer_integrators: list[nn.Module | None] = []
        n_types = len(self.layer_types)
        shift_tokens = o.shift_tokens if isinstance(o.shift_tokens, tuple) else (o.shift_tokens,) * n_types
        layer_dropout = (
            o.layer_dropout if isinstance(o.layer_dropout, tuple) else (o.layer_dropout,) * n_types
        )
        if len(shift_tokens) != n_types or len(layer_dropout) != n_types:
            raise SpecError(
                f"{owner}: per-layer shift_tokens / layer_dropout need one value per block ({n_types})"
            )
        self.layer_dropouts = layer_dropout

        cross_kwargs = {**attn_kwargs, **cross_kwargs}
        cross_kwargs.pop("gate_values_bias", None)
        attn_kwargs = {**attn_kwargs, "gate_values_bias": o.xtf_gate_values_bias}

        num_skips = self.depth // self.block_len
        if o.unet_skips and num_skips == 0:
            raise SpecError(f"{owner}: unet_skips needs a depth of at least 2")
        skip_indices = [i * self.block_len for i in range(num_skips)]
        skip_combines: list[nn.Module | None] = []

        self.layers = nn.ModuleList()
        first_self_attn = True
        for index, (layer_type, layer_shift) in enumerate(zip(self.layer_types, shift_tokens)):
            is_last = index == len(self.layer_types) - 1
            block_begin = index % self.block_len == 0
            block_ind = index // self.block_len
            # init-only options: a zero or depth-scaled output projection (zero wins, as in x-transformers)
            branch_init: dict[str, Any] = {"output_proj_depth": block_ind + 1} if depth_scaled_init else {}
            if o.zero_init_branch_output:
                branch_init = {**branch_init, "zero_init_output": True}
            diff_view = layer_type == "a" and qkv_views and not (first_self_attn and o.integrate_layers)
            views = 3 if diff_view else 1
            stream_views = 3 if (layer_type == "a" and self.produce_views) else 1
            if layer_type == "a":
                value_mix = o.add_value_residual and o.learned_value_residual_mix and not first_self_attn
                extra: dict[str, Any] = {"learned_value_residual_mix": True} if value_mix else {}
                if diff_view:
                    extra["qkv_receive_diff_residuals"] = True
                if o.rotate_num_heads is not None:
                    extra["rotate_num_heads"] = o.rotate_num_heads
                block: nn.Module = Attention(
                    o.dim,
                    heads=o.heads,
                    causal=o.causal,
                    rotate_values=o.xtf_rotary_values,
                    out_bias=o.xtf_attn_out_bias,
                    **{**attn_kwargs, **branch_init, **extra},
                )
                first_self_attn = False
            elif layer_type == "c":
                if not o.cross_attend:
                    raise SpecError(f"{owner}: custom_layers has 'c' but cross_attend is False")
                block = Attention(
                    o.dim,
                    heads=o.heads,
                    **{**cross_kwargs, **branch_init},
                    gate_values_bias=o.xtf_gate_values_bias,
                    out_bias=o.xtf_attn_out_bias,
                )
            else:
                block = FeedForward(o.dim, **{**ff_kwargs, **branch_init})
            if layer_type == "f" and o.macaron:
                block = Scale(0.5, block)
            if layer_shift > 0:
                block = ShiftTokens(tuple(range(-layer_shift if not o.causal else 0, layer_shift + 1)), block)
            if o.use_layerscale:
                block = LayerScale(block, o.dim, o.layerscale_init_value, unit_offset=o.norm_add_unit_offset)
            elif o.use_adaptive_layerscale:
                block = AdaptiveLayerScale(block, o.dim, dim_condition_inner)
            if residual_scale is not None and residual_scale != 1.0:
                block = Scale(residual_scale, block)
            residual: Residual
            if o.gated_multi_residual:
                residual = GatedMultiResidual(
                    o.dim,
                    layer_index=index,
                    num_residual_streams=self.num_residual_streams,
                    read_gate_rank=o.residual_fn_kwargs.get("read_gate_rank"),
                    num_input_views=stream_views,
                )
            elif self.num_residual_streams > 1:
                residual = HyperConnection(
                    o.dim,
                    layer_index=index,
                    num_residual_streams=self.num_residual_streams,
                    num_input_views=stream_views,
                    sinkhorn_iters=o.hyper_conn_sinkhorn_iters,
                )
            elif o.gate_residual:
                residual = GRUGating(o.dim, scale_residual=o.scale_residual)
            elif o.orthog_residual:
                residual = OrthogonalResidual(o.dim, scale_residual=o.scale_residual)
            elif o.mv_split_residual:
                residual = MVSplitResidual(o.dim, **o.residual_fn_kwargs)
            else:
                residual = Residual(o.dim, o.scale_residual, o.scale_residual_constant)
            integrator: nn.Module | None = None
            if o.integrate_layers:
                integrator = DynamicLIMe(o.dim, index + 1, views, use_softmax=o.layer_integrate_use_softmax)
            elif o.attn_aggregated_residuals:
                integrator = AttentionResidual(o.dim, views, lora_rank=aggregated_kwargs.get("lora_rank"))
            layer_integrators.append(integrator)
            if o.unet_skips and block_begin and block_ind >= self.depth / 2:
                if not skip_indices:
                    raise SpecError(
                        f"{owner}: unet_skips has more skip targets than skip sources in this layout"
                    )
                skip_combines.append(ConcatCombine(o.dim, skip_indices.pop()))
            else:
                skip_combines.append(None)
            norms = nn.ModuleList(
                [
                    make_norm() if pre_norm else None,
                    make_norm() if o.sandwich_norm else None,
                    make_norm(final=is_last)
                    if (not pre_norm or o.pre_and_post_norm) and not (is_last and o.xtf_no_final_norm)
                    else None,
                ]
            )
            self.layers.append(nn.ModuleList([norms, block, residual]))
        self.skip_combines = nn.ModuleList(skip_combines) if o.unet_skips else None
        self.layer_integrators = (
            nn.ModuleList(layer_integrators) if (o.attn_aggregated_residuals or o.integrate_layers) else None
        )
        has_final_norm = (
            (pre_norm and o.pre_norm_has_final_norm and not o.pre_and_post_norm) or o.gated_multi_residual
        ) and not o.xtf_no_final_norm
        self.final_norm = make_norm(final=True) if has_final_norm else nn.Identity()
        self.reinject_input_proj = nn.Linear(o.dim, o.dim, bias=False) if o.reinject_input else None
        self.learned_reinject_input_gate = (
            nn.Linear(o.dim, 1, bias=False) if o.learned_reinject_input_gate else None
        )
        # a plain residual (no gain, no gate, one stream) is added inline in forward
        self.plain_residual = all(type(layer[2]) is Residual for layer in self.layers) and not (
            o.scale_residual or o.scale_residual_constant != 1
        )
        self.can_cache_kv = all(m.can_cache_kv for m in self.modules() if isinstance(m, Attention))

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        self_attn_kv_mask: Tensor | None = None,
        mems: list[Tensor] | tuple[Tensor, ...] | None = None,
        mem_masks: list[Tensor] | tuple[Tensor, ...] | None = None,
        seq_start_pos: Tensor | None = None,
        seq_pos_offset: int | None = None,
        cache: LayerIntermediates | None = None,
        input_not_include_cache: bool = False,
        cache_age: int = 1,
        return_hiddens: bool = False,
        return_attn: bool = False,
        pos: Tensor | None = None,
        condition: Tensor | None = None,
        in_attn_cond: Tensor | None = None,
        layers_execute_order: tuple[int, ...] | None = None,
        repeat_blocks: Any = None,
        transform_block_inputs: dict[int, Callable[[Tensor], Tensor]] | Callable[..., Tensor] | None = None,
        deep_embeds_and_ids: tuple[Tensor, Tensor] | None = None,
        causal: bool | None = None,
        context_pos: Tensor | None = None,
        **other: Any,
    ) -> Tensor | tuple[Tensor, LayerIntermediates]:
        if other:
            _refuse_forward_kwargs(type(self).__name__, other)
        # `causal=` overrides the stack's causality for its self-attention, for this call only
        causal_kwargs = {"causal": causal} if causal is not None else {}
        if causal is not None and cache is not None and not causal:
            raise ValueError(
                "a key/value cache needs causal self-attention; do not pass causal=False with it"
            )
        if self.cross_attend != (context is not None):
            raise ValueError("context must be passed if and only if cross_attend=True")
        if self.need_condition != (condition is not None):
            raise ValueError(
                "condition must be passed if and only if the stack uses adaptive norms or layer scale"
            )
        if condition is not None:
            if condition.shape[-1] != self.dim_condition or condition.ndim not in (2, 3):
                raise ValueError(
                    f"expected a condition [b, {self.dim_condition}] or [b, n, {self.dim_condition}], "
                    f"got {tuple(condition.shape)}"
                )
            if condition.ndim == 2:
                condition = condition[:, None]
            condition = self.adaptive_mlp(condition)
        norm_kwargs = {"condition": condition} if self.norm_need_condition else {}
        block_kwargs = {"condition": condition} if self.post_branch_needs_condition else {}

        if repeat_blocks is not None:
            if layers_execute_order is not None:
                raise ValueError("pass either repeat_blocks or layers_execute_order, not both")
            o = self.options
            if o.custom_layers is not None or o.par_ratio is not None or o.sandwich_coef is not None:
                raise ValueError("repeat_blocks needs the plain depth layout")
            layers_execute_order = _repeat_blocks_order(
                repeat_blocks, len(self.layer_types) // self.block_len, self.block_len
            )
        order = self.layers_execute_order if layers_execute_order is None else tuple(layers_execute_order)
        if any(not 0 <= i < len(self.layers) for i in order):
            raise ValueError(f"layers_execute_order {order} names a block outside 0..{len(self.layers) - 1}")
        num_self_attn = sum(self.layer_types[i] == "a" for i in order)

        if seq_pos_offset is None:
            seq_pos_offset = cache.cache_length if cache is not None else 0
        mems_left = list(mems) if mems is not None else []
        mem_masks_left = list(mem_masks) if mem_masks is not None else []
        if mems is not None and len(mems_left) != num_self_attn:
            raise ValueError(
                f"expected {num_self_attn} memories (one per self-attention layer run), got {len(mems_left)}"
            )

        if seq_start_pos is not None:
            arange = torch.arange(x.shape[-2] + seq_pos_offset, device=x.device)
            left_pad = arange >= seq_start_pos[..., None]
            self_attn_kv_mask = left_pad if self_attn_kv_mask is None else self_attn_kv_mask & left_pad

        rotary = None
        if self.rotary_pos_emb is not None:
            mem_len = mems_left[0].shape[1] if mems_left else 0
            rotary_pos = pos
            if rotary_pos is None:
                rotary_pos = torch.arange(x.shape[1] + mem_len + seq_pos_offset, device=x.device) - mem_len
            rotary = self.rotary_pos_emb(rotary_pos)
        # rotary positions for the context, when given: cross-attention then rotates queries and keys too
        cross_rotary: dict[str, Any] = {}
        if context_pos is not None and rotary is not None:  # without rotary embeddings it has no use
            if not self.cross_attend:
                raise ValueError("context_pos needs a cross-attending stack (cross_attend=True)")
            if cache is not None:
                raise UnsupportedOptionError(
                    f"{type(self).__name__}.forward: keyword 'context_pos' with a key/value cache is not "
                    "supported by the xtf core; leave it at None when decoding with the cache"
                )
            cross_rotary = {
                "rotary_pos_emb": rotary,
                "context_rotary_pos_emb": self.rotary_pos_emb(context_pos),
            }
        polar_kwargs: dict[str, Any] = {}
        if self.polar_pos_emb is not None:
            polar_pos = pos if pos is not None else torch.arange(x.shape[1] + seq_pos_offset, device=x.device)
            polar_kwargs["polar_pos_emb"] = self.polar_pos_emb(polar_pos)

        caches: list[AttentionIntermediates] = []
        prev_cache_length = 0
        if cache is not None:
            if not self.causal or attn_mask is not None:
                raise ValueError("a key/value cache needs a causal stack and no attn_mask")
            prev_cache_length = cache.cache_length
            if context is not None:
                context = context[:, :0]
            if cache_age > 0:
                x = x[:, -cache_age:]
                if deep_embeds_and_ids is not None:
                    deep_embeds_and_ids = (deep_embeds_and_ids[0], deep_embeds_and_ids[1][:, -cache_age:])
            caches = list(cache.attn_intermediates)
        cache_iter = iter(caches)
        next_cache_length = x.shape[1]

        # per-token feed-forward gains, one [b, n, d] slice per feed-forward layer run
        deep_embeds = None
        if deep_embeds_and_ids is not None:
            table, token_ids = deep_embeds_and_ids
            deep_embeds = iter(table[token_ids].movedim(-2, 0))

        streams = self.num_residual_streams
        if self.stream_emb is not None:
            if mems is not None:
                raise ValueError("Transformer-XL memories cannot be used with num_residual_streams > 1")
            b, n, d = x.shape
            x = (x[:, None] + self.stream_emb[None, :, None, :]).reshape(b * streams, n, d)

        inject = None
        if self.reinject_input_proj is not None:
            if in_attn_cond is not None:
                raise ValueError("in_attn_cond cannot be combined with reinject_input")
            inject = self.reinject_input_proj(x)
        elif in_attn_cond is not None:
            inject = in_attn_cond if in_attn_cond.ndim == 3 else in_attn_cond[:, None]
        if inject is not None and self.learned_reinject_input_gate is not None:
            inject = inject * self.learned_reinject_input_gate(x).sigmoid()

        hiddens: list[Tensor] = []
        inters: list[AttentionIntermediates] = []
        skip_hiddens: list[Tensor] = []
        layer_hiddens: list[Tensor] = []
        block_hiddens: list[Tensor] = []
        last_index = len(self.layers) - 1
        prev_attn = prev_cross_attn = None
        first_values: dict[str, Tensor] = {}
        need_logits = return_attn or self.residual_attn
        add_value_residual = self.options.add_value_residual
        tokens_dropout = self.options.cross_attn_tokens_dropout if self.training else 0.0
        for step, index in enumerate(order):
            layer_type = self.layer_types[index]
            norms, block, residual_fn = self.layers[index]
            if transform_block_inputs is not None and step % self.block_len == 0 and step >= self.block_len:
                block_depth = step // self.block_len + 1
                if isinstance(transform_block_inputs, dict):
                    if block_depth in transform_block_inputs:
                        x = transform_block_inputs[block_depth](x)
                else:
                    x = transform_block_inputs(block_depth, x)
            if self.skip_combines is not None:
                skip_hiddens.append(x)
                skip_combine = self.skip_combines[index]
                if skip_combine is not None:
                    x = skip_combine(x, skip_hiddens)
            drop = self.layer_dropouts[index]
            if self.training and drop > 0.0 and random.random() < drop:
                continue
            pre_branch_norm, post_branch_norm, post_main_norm = norms
            layer_mem = layer_mem_mask = None
            if layer_type == "a":
                hiddens.append(x)
                layer_mem = mems_left.pop(0) if mems_left else None
                layer_mem_mask = mem_masks_left.pop(0) if mem_masks_left else None
            elif layer_type == "c" and tokens_dropout > 0.0:
                assert context is not None
                context, context_mask = dropout_seq(context, context_mask, tokens_dropout)
            if self.plain_residual:
                residual, residual_kwargs = x, {}
            else:
                x, residual, residual_kwargs = residual_fn.prepare(x)
            layer_hiddens.append(x)
            if self.layer_integrators is not None:
                integrator = self.layer_integrators[index]
                if integrator is not None:
                    x = integrator(x, layer_hiddens)
            if inject is not None:
                x = x + inject
            if pre_branch_norm is not None:
                x = pre_branch_norm(x, **norm_kwargs)
                if self.options.xtf_normed_residual:  # x-transformers 0.4.0-0.7.3
                    residual = x
                if layer_mem is not None and not self.options.xtf_unnormed_mems:
                    layer_mem = pre_branch_norm(layer_mem, **norm_kwargs)
            value_kwargs: dict[str, Any] = {}
            if add_value_residual and layer_type in first_values:
                value_kwargs["value_residual"] = first_values[layer_type]
            if layer_type == "a":
                out, inter = block(
                    x,
                    mask=mask,
                    context_mask=self_attn_kv_mask,
                    attn_mask=attn_mask,
                    rel_pos=self.rel_pos,
                    pos=pos,
                    rotary_pos_emb=rotary,
                    **polar_kwargs,
                    prev_attn=prev_attn,
                    mem=layer_mem,
                    mem_mask=layer_mem_mask,
                    cache=next(cache_iter, None),
                    need_logits=need_logits,
                    **block_kwargs,
                    **value_kwargs,
                    **causal_kwargs,
                )
            elif layer_type == "c":
                out, inter = block(
                    x,
                    context=context,
                    mask=mask,
                    context_mask=context_mask,
                    prev_attn=prev_cross_attn,
                    cache=next(cache_iter, None),
                    need_logits=return_attn or self.cross_residual_attn,
                    **block_kwargs,
                    **value_kwargs,
                    **cross_rotary,
                )
            else:
                deep = {"deep_embed": next(deep_embeds, None)} if deep_embeds is not None else {}
                out, inter = block(x, **block_kwargs, **deep), None
            if add_value_residual and inter is not None and layer_type not in first_values:
                first_values[layer_type] = inter.values
            if post_branch_norm is not None:
                out = post_branch_norm(out, **norm_kwargs)
            x = (
                _add_residual(out, residual)
                if self.plain_residual
                else residual_fn(out, residual, mask=mask, **residual_kwargs)
            )
            if inter is not None:
                inter.layer_type = layer_type
                inters.append(inter)
                if layer_type == "a" and self.residual_attn:
                    prev_attn = inter.pre_softmax_attn
                elif layer_type == "c" and self.cross_residual_attn:
                    prev_cross_attn = inter.pre_softmax_attn
            if post_main_norm is not None:
                x = post_main_norm(x, **norm_kwargs)
            if (step + 1) % self.block_len == 0 or step == last_index:
                block_hiddens.append(x)

        if return_hiddens:
            layer_hiddens.append(x)
        if self.options.softclamp_output:
            value = self.options.softclamp_output_value
            x = (x / value).tanh() * value
        if streams > 1:
            x = x.unflatten(0, (-1, streams)).sum(dim=1)
        x = self.final_norm(x, **norm_kwargs) if not isinstance(self.final_norm, nn.Identity) else x
        if not return_hiddens:
            return x
        if block_hiddens:
            block_hiddens[-1] = x
        return x, LayerIntermediates(
            hiddens=hiddens,
            last_hidden=x,
            attn_intermediates=inters,
            cache_length=next_cache_length + prev_cache_length,
            layer_hiddens=layer_hiddens,
            block_hiddens=block_hiddens,
        )


class Encoder(AttentionLayers):
    """Bidirectional attention stack."""

    def __init__(self, **kwargs: Any) -> None:
        if "causal" in kwargs:
            raise SpecError("Encoder: 'causal' cannot be set on an Encoder (use Decoder)")
        super().__init__(**kwargs)


class Decoder(AttentionLayers):
    """Causal attention stack."""

    def __init__(self, **kwargs: Any) -> None:
        if "causal" in kwargs:
            raise SpecError("Decoder: 'causal' cannot be set on a Decoder (it is always causal)")
        super().__init__(**kwargs, causal=True)
        self._spec.pop("causal", None)


class CrossAttender(AttentionLayers):
    """Stack of cross-attention and feed-forward blocks only."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs, cross_attend=True, only_cross=True)
        self._spec.pop("cross_attend", None)
        self._spec.pop("only_cross", None)
