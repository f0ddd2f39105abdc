"""Multi-head attention with x-transformers' parameter layout (`to_q`, `to_k`, `to_v`, `to_out`, `to_v_gate`,
`mem_k`/`mem_v`, `attend.*`, ...).

A model that sets none of the optional features runs the plain path: projections, optional qk-norm and
rotary, then `F.scaled_dot_product_attention` (see `attend.py`). Each option adds only its own step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedOptionError
from .attend import Attend, AttentionIntermediates, CoPE, attend, refuse
from .norms import global_hooks, has_hooks
from .positions import (
    AlibiPositionalBias,
    DynamicPositionBias,
    RelativePositionBias,
    apply_rotary,
    apply_rotary_to_qk,
)


def _l2norm(t: Tensor, groups: int) -> Tensor:
    t = t.unflatten(-1, (groups, -1))
    return F.normalize(t, p=2, dim=-1).flatten(-2)


class MultiheadRMSNorm(nn.Module):
    """RMS norm over the last dim of `[b, h, n, d]` with a per-head gain stored as an offset from 1 (`gamma`)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.zeros(heads, 1, dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * self.scale * (self.gamma + 1.0)


class LowRankGate(nn.Module):
    """`up(act(down(x)))`: the low-rank gate projection (`down`, `up`) of x-transformers' gated attention."""

    def __init__(self, dim_in: int, dim_out: int, rank: int, silu: bool) -> None:
        super().__init__()
        if not (rank < dim_in or rank < dim_out):
            raise UnsupportedOptionError(
                f"gate rank {rank} must be below the gate's input ({dim_in}) or output ({dim_out}) dimension"
            )
        self.down = nn.Linear(dim_in, rank, bias=False)
        self.up = nn.Linear(rank, dim_out, bias=False)
        nn.init.zeros_(self.up.weight)
        self.silu = silu

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.down(x)
        return self.up(F.silu(hidden) if self.silu else hidden)


def _gate(dim_in: int, dim_out: int, rank: int | None, silu: bool, bias: bool = False) -> nn.Module:
    # a full-rank gate keeps torch's default init (as xtf always had); x-transformers zero-inits it
    return nn.Linear(dim_in, dim_out, bias=bias) if rank is None else LowRankGate(dim_in, dim_out, rank, silu)


def _orthogonal_part(x: Tensor, y: Tensor) -> Tensor:
    """The part of `x` orthogonal to `y`, each flattened per batch element (computed in float64)."""
    shape, dtype = x.shape, x.dtype
    flat_x, flat_y = x.reshape(shape[0], -1), y.reshape(shape[0], -1)
    if x.device.type != "mps":
        flat_x, flat_y = flat_x.double(), flat_y.double()
    unit = F.normalize(flat_y, dim=-1)
    orthog = flat_x - (flat_x * unit).sum(dim=-1, keepdim=True) * unit
    return orthog.reshape(shape).to(dtype)


def _apply_polar(t: Tensor, freqs: Tensor) -> Tensor:
    """`softplus(t)` times `(cos, sin)` of the last `n` positions of `freqs`, concatenated (float32)."""
    freqs = freqs[:, -t.shape[-2] :]
    with torch.autocast(device_type=t.device.type, enabled=False):
        magnitude = F.softplus(t.float())
        return torch.cat((magnitude * freqs.cos(), magnitude * freqs.sin()), dim=-1).to(t.dtype)


_refuse = refuse


class DataDependentAlibi(nn.Module):
    """Forgetting-transformer bias (`to_forget_gates`): per-token log-sigmoid forget gates, summed between
    key and query; a bidirectional model has a second set of gates for the keys after the query."""

    def __init__(
        self, dim: int, heads: int, causal: bool, bias_init: float = 5.0, post_log_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.causal, self.post_log_scale = causal, post_log_scale
        linear = nn.Linear(dim, heads * (1 if causal else 2))
        nn.init.constant_(linear.bias, bias_init)
        self.to_forget_gates = nn.Sequential(linear)

    def forward(self, x: Tensor) -> Tensor:
        gates = (F.logsigmoid(self.to_forget_gates(x)) * self.post_log_scale).transpose(1, 2).cumsum(dim=-1)
        if self.causal:
            return gates[..., :, None] - gates[..., None, :]
        forward_gates, backward_gates = gates.chunk(2, dim=1)
        past = forward_gates[..., :, None] - forward_gates[..., None, :]
        future = backward_gates[..., None, :] - backward_gates[..., :, None]
        return past.tril() + future.triu()


class PerRowDataDependentAlibi(nn.Module):
    """Forget gates from small per-head queries and keys (`to_forget_gates`), summed over the keys between."""

    def __init__(self, dim: int, heads: int, dim_head: int = 8, post_log_scale: float = 1.0) -> None:
        super().__init__()
        self.heads, self.dim_head, self.post_log_scale = heads, dim_head, post_log_scale
        self.to_forget_gates = nn.Sequential(nn.Linear(dim, heads * dim_head * 2, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[-2]
        qk = self.to_forget_gates(x).unflatten(-1, (2, self.heads, self.dim_head)).permute(2, 0, 3, 1, 4)
        q, k = qk[0], qk[1]
        gates = F.logsigmoid((q @ k.transpose(-1, -2)) * self.dim_head**-0.5) * self.post_log_scale
        gates = gates.masked_fill(torch.ones((n, n), dtype=torch.bool, device=x.device).triu(), 0.0)
        return gates.flip(-1).cumsum(dim=-1).flip(-1)


class RelativeProjPositionalBias(nn.Module):
    """Relative bias from a learned bank of distance curves (`distance_bank`), mixed per query token
    (`to_distance_weights`); zero beyond `max_dist` and for keys after the query."""

    def __init__(self, dim: int, heads: int, num_distance_basis: int = 16, max_dist: int = 1024) -> None:
        super().__init__()
        self.heads, self.max_dist = heads, max_dist
        self.to_distance_weights = nn.Sequential(nn.Linear(dim, heads * num_distance_basis))
        self.distance_bank = nn.Parameter(torch.randn(num_distance_basis, max_dist) * 0.02)

    def forward(self, x: Tensor, seq_len_k: int) -> Tensor:
        b, n = x.shape[:2]
        distance = (torch.arange(n, device=x.device) + seq_len_k - n)[:, None] - torch.arange(
            seq_len_k, device=x.device
        )
        valid = (distance >= 0) & (distance < self.max_dist)
        weights = self.to_distance_weights(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        curves = weights @ self.distance_bank  # [b, h, n, max_dist]
        index = distance.clamp(0, self.max_dist - 1).expand(b, self.heads, n, seq_len_k)
        return curves.gather(-1, index).masked_fill(~valid, 0.0)


class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        *,
        heads: int = 8,
        dim_head: int = 64,
        causal: bool = False,
        dim_context: int | None = None,
        kv_heads: int | None = None,
        one_kv_head: bool = False,
        qk_norm: bool = False,
        qk_norm_groups: int = 1,
        qk_norm_scale: float = 10,
        qk_norm_dim_scale: bool = False,
        qk_rmsnorm: bool = False,
        k_rmsnorm: bool = False,
        value_rmsnorm: bool = False,
        gate_values: bool = False,
        gate_values_bias: bool = False,
        gate_values_rank: int | None = None,
        gate_values_headwise: bool = False,
        swiglu_values: bool = False,
        output_gate: bool = False,
        output_gate_rank: int | None = None,
        output_gate_headwise: bool = False,
        low_rank_silu_gates: bool = True,
        gate_value_heads: bool = False,
        rotate_values: bool = False,
        out_bias: bool = False,
        rotate_num_heads: int | None = None,
        flash: bool = False,
        dropout: float = 0.0,
        sublayer_dropout: float = 0.0,
        num_mem_kv: int = 0,
        on_attn: bool = False,
        head_scale: bool = False,
        max_attend_past: int | None = None,
        value_dim_head: int | None = None,
        dim_out: int | None = None,
        project_out: bool | None = None,
        zero_init_output: bool = False,
        output_proj_depth: int | None = None,
        learned_value_residual_mix: bool = False,
        orthog_projected_values: bool = False,
        orthog_projected_values_per_head: bool = False,
        laser: bool = False,
        laser_softclamp_value: float = 15.0,
        onnxable: bool = False,
        attend_sdp_kwargs: dict | None = None,
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
        use_latent_q: bool = False,
        dim_latent_q: int | None = None,
        use_latent_kv: bool = False,
        dim_latent_kv: int | None = None,
        latent_rope_subheads: int | None = None,
        data_dependent_alibi: bool = False,
        data_dependent_alibi_per_row: bool = False,
        data_dependent_alibi_per_row_dim_head: int = 8,
        data_dependent_alibi_kwargs: dict | None = None,
        use_rel_proj_pos_bias: bool = False,
        rel_proj_num_distance_basis: int = 16,
        rel_proj_max_dist: int = 1024,
        use_cope: bool = False,
        cope_max_pos: int = 16,
        cope_soft_onehot_pos: bool = False,
        cope_talking_heads: bool = False,
        qkv_receive_diff_residuals: bool = False,
    ) -> None:
        super().__init__()
        if kv_heads is not None and one_kv_head:
            raise ValueError("set either attn_one_kv_head or attn_kv_heads, not both")
        kv_heads = 1 if one_kv_head else (kv_heads if kv_heads is not None else heads)
        if heads % kv_heads:
            raise ValueError(f"heads ({heads}) must be divisible by attn_kv_heads ({kv_heads})")
        if qk_norm and (dim_head % qk_norm_groups or dim_head // qk_norm_groups <= 2):
            raise ValueError(f"attn_qk_norm_groups={qk_norm_groups} does not fit dim_head={dim_head}")
        value_dim_head = value_dim_head if value_dim_head is not None else dim_head
        if use_latent_q and dim_latent_q is None:
            _refuse("attention option 'use_latent_q' needs 'dim_latent_q'")
        if use_latent_kv and dim_latent_kv is None:
            _refuse("attention option 'use_latent_kv' needs 'dim_latent_kv'")
        if use_latent_kv and dim_context is not None and dim_context != dim:
            _refuse(
                "attention option 'use_latent_kv' needs a context of the model dimension (no dim_context)"
            )
        if latent_rope_subheads is not None:
            if not use_latent_kv:
                _refuse("attention option 'latent_rope_subheads' needs 'use_latent_kv'")
            if rotate_num_heads is not None:
                _refuse("attention option 'latent_rope_subheads' cannot be combined with 'rotate_num_heads'")
            if not 0 < latent_rope_subheads < kv_heads:
                _refuse(
                    f"attention option 'latent_rope_subheads' must be between 1 and kv_heads - 1 ({kv_heads - 1})"
                )
            rotate_num_heads = latent_rope_subheads
        rotate_num_heads = rotate_num_heads if rotate_num_heads is not None else heads
        if use_latent_q and (use_rel_proj_pos_bias or learned_value_residual_mix):
            _refuse(
                "attention option 'use_latent_q' cannot be combined with rel_proj_pos_bias or a learned value mix"
            )
        if use_rel_proj_pos_bias and num_mem_kv:
            _refuse("attention option 'use_rel_proj_pos_bias' cannot be combined with 'num_mem_kv'")
        if use_cope and cope_soft_onehot_pos:
            _refuse(
                "attention option 'cope_soft_onehot_pos' is not supported (x-transformers 2.31.10 cannot run it)"
            )
        if qkv_receive_diff_residuals and (use_latent_q or use_latent_kv):
            _refuse("attention option 'qkv_receive_diff_residuals' cannot be combined with latent attention")
        if use_cope and not causal:
            _refuse("attention option 'use_cope' needs causal attention (a Decoder)")
        if data_dependent_alibi_per_row and not causal and data_dependent_alibi:
            _refuse("attention option 'data_dependent_alibi_per_row' needs causal attention (a Decoder)")
        explicit = [
            name
            for name, on in (
                ("pre_talking_heads", pre_talking_heads),
                ("post_talking_heads", post_talking_heads),
                ("pre_scale_post_talking_heads", pre_scale_post_talking_heads),
                ("sparse_topk", sparse_topk is not None),
                ("softclamp_logits", softclamp_logits),
                ("cog_signed", cog_signed),
                ("sigmoid", sigmoid),
                ("hard", hard),
                ("head_learned_sink", head_learned_sink),
                ("selective", selective),
                ("inverted_attention", inverted_attention),
                ("use_cope", use_cope),
            )
            if on
        ]
        if flash and explicit:
            _refuse(
                f"attention option '{explicit[0]}' needs the attention logits: it cannot be combined with flash"
            )
        if qk_rmsnorm and k_rmsnorm:
            _refuse("attention options 'qk_rmsnorm' and 'k_rmsnorm' exclude each other: choose one")
        if gate_values_headwise and gate_values_rank is not None:
            _refuse("attention option 'gate_values_rank' cannot be combined with 'gate_values_headwise'")
        if output_gate_headwise and output_gate_rank is not None:
            _refuse("attention option 'output_gate_rank' cannot be combined with 'output_gate_headwise'")
        if value_rmsnorm and (kv_heads != heads or value_dim_head != dim_head):
            _refuse("attention option 'value_rmsnorm' needs kv_heads == heads and value_dim_head == dim_head")
        if num_mem_kv and value_dim_head != dim_head:
            _refuse("attention option 'num_mem_kv' needs value_dim_head == dim_head")
        if rotate_values and value_dim_head != dim_head:
            _refuse("rotated values need value_dim_head == dim_head")
        if not 0 < rotate_num_heads <= heads:
            _refuse(f"attention option 'rotate_num_heads' must be between 1 and heads ({heads})")
        if rotate_num_heads < heads and kv_heads < heads:
            _refuse("attention option 'rotate_num_heads' cannot be combined with grouped key/value heads")
        if sublayer_dropout < 0 or dropout < 0:
            raise ValueError("dropout probabilities must be non-negative")

        dim_kv = dim_context if dim_context is not None else dim
        dim_out = dim_out if dim_out is not None else dim
        self.heads, self.kv_heads, self.dim_head, self.causal = heads, kv_heads, dim_head, causal
        self.value_dim_head = value_dim_head
        self.qk_norm, self.qk_norm_groups = qk_norm, qk_norm_groups
        self.dropout, self.sublayer_dropout = dropout, sublayer_dropout
        # attention always runs on scaled_dot_product_attention where the options allow (x-transformers'
        # `attn_flash` chose that path); the flag is kept so specs round-trip and incompatible options are refused
        self.flash = flash
        self.onnxable, self.attend_sdp_kwargs = onnxable, attend_sdp_kwargs  # same function on every path
        self.max_attend_past, self.num_mem_kv = max_attend_past, num_mem_kv
        self.rotate_num_heads = rotate_num_heads
        self.laser, self.laser_softclamp_value = laser, laser_softclamp_value
        self.can_cache_kv = not selective
        # self-attention whose x stacks three views [3, b, n, d]: query, key and value inputs
        self.qkv_receive_diff_residuals = qkv_receive_diff_residuals

        # multi-latent attention: queries and/or keys and values from a low-rank latent (the cache holds it),
        # plus `latent_rope_subheads` key heads straight from the input, the only heads rotary touches
        self.to_latent_q = nn.Linear(dim, dim_latent_q, bias=False) if use_latent_q else None
        self.to_latent_kv = nn.Linear(dim, dim_latent_kv, bias=False) if use_latent_kv else None
        self.to_rotateable_k = None
        k_heads = kv_heads
        if latent_rope_subheads is not None:
            self.to_rotateable_k = nn.Linear(dim, dim_head * latent_rope_subheads, bias=False)
            k_heads = kv_heads - latent_rope_subheads
        dim_q_input = dim_latent_q if use_latent_q else dim
        dim_kv_input = dim_latent_kv if use_latent_kv else dim_kv

        self.to_q = nn.Linear(dim_q_input, dim_head * heads, bias=False)
        self.to_k = nn.Linear(dim_kv_input, dim_head * k_heads, bias=False)
        self.to_v = nn.Linear(dim_kv_input, value_dim_head * kv_heads, bias=False)
        out_dim = value_dim_head * heads

        self.gate_activation = F.silu if swiglu_values else torch.sigmoid
        self.gate_values_headwise, self.output_gate_headwise = gate_values_headwise, output_gate_headwise
        self.to_v_gate = (
            _gate(
                dim,
                heads if gate_values_headwise else out_dim,
                gate_values_rank,
                low_rank_silu_gates,
                gate_values_bias,
            )
            if gate_values
            else None
        )
        self.to_output_gate = (
            _gate(out_dim, heads if output_gate_headwise else out_dim, output_gate_rank, low_rank_silu_gates)
            if output_gate
            else None
        )
        self.to_v_head_gate = None
        if gate_value_heads:
            self.to_v_head_gate = nn.Linear(dim, heads)
            nn.init.zeros_(self.to_v_head_gate.weight)
            nn.init.constant_(self.to_v_head_gate.bias, 10.0)
        self.rotate_values = rotate_values

        self.scale = dim_head**-0.5
        self.qk_norm_q_scale: nn.Parameter | None = None
        self.qk_norm_k_scale: nn.Parameter | None = None
        if qk_norm and qk_norm_dim_scale:
            self.qk_norm_q_scale = nn.Parameter(torch.ones(heads, 1, dim_head) * dim_head**0.25)
            self.qk_norm_k_scale = nn.Parameter(torch.ones(kv_heads, 1, dim_head) * dim_head**0.25)
        elif qk_norm:
            self.scale = qk_norm_scale
        self.float32_softmax = not qk_norm
        self.q_rmsnorm = MultiheadRMSNorm(dim_head, heads) if qk_rmsnorm else None
        self.k_rmsnorm = MultiheadRMSNorm(dim_head, kv_heads) if (qk_rmsnorm or k_rmsnorm) else None
        self.value_rmsnorm = MultiheadRMSNorm(dim_head, heads) if value_rmsnorm else None

        self.attend = Attend(
            heads,
            causal=causal,
            pre_talking_heads=pre_talking_heads,
            post_talking_heads=post_talking_heads,
            pre_scale_post_talking_heads=pre_scale_post_talking_heads,
            sparse_topk=sparse_topk,
            sparse_topk_straight_through=sparse_topk_straight_through,
            softclamp_logits=softclamp_logits,
            logit_softclamp_value=logit_softclamp_value,
            cog_signed=cog_signed,
            sigmoid=sigmoid,
            hard=hard,
            l2_distance=l2_distance,
            add_zero_kv=add_zero_kv,
            head_learned_sink=head_learned_sink,
            gumbel_softmax=gumbel_softmax,
            gumbel_softmax_temp=gumbel_softmax_temp,
            gumbel_softmax_hard=gumbel_softmax_hard,
            selective=selective,
            inverted_attention=inverted_attention,
            cope=CoPE(dim_head, heads, cope_max_pos, cope_soft_onehot_pos, cope_talking_heads)
            if use_cope
            else None,
        )
        self.plain_kernel = not (self.attend.explicit or self.attend.add_zero_kv)

        self.data_dependent_alibi: nn.Module | None = None
        if data_dependent_alibi:
            extra = dict(data_dependent_alibi_kwargs or {})
            unknown = set(extra) - (
                {"post_log_scale"} if data_dependent_alibi_per_row else {"bias_init", "post_log_scale"}
            )
            if unknown:
                _refuse(f"attention option 'data_dependent_alibi_kwargs' does not take {sorted(unknown)}")
            self.data_dependent_alibi = (
                PerRowDataDependentAlibi(dim, heads, data_dependent_alibi_per_row_dim_head, **extra)
                if data_dependent_alibi_per_row
                else DataDependentAlibi(dim, heads, causal, **extra)
            )
        self.rel_proj_pos_bias = (
            RelativeProjPositionalBias(dim, heads, rel_proj_num_distance_basis, rel_proj_max_dist)
            if use_rel_proj_pos_bias
            else None
        )
        self.head_scale_params = nn.Parameter(torch.ones(1, heads, 1, 1)) if head_scale else None
        if num_mem_kv > 0:
            self.mem_k = nn.Parameter(torch.randn(kv_heads, num_mem_kv, dim_head))
            self.mem_v = nn.Parameter(torch.randn(kv_heads, num_mem_kv, dim_head))
        self.to_value_residual_mix = (
            nn.Sequential(nn.Linear(dim, heads), nn.Sigmoid()) if learned_value_residual_mix else None
        )
        self.orthog_projected_values = orthog_projected_values
        self.orthog_projected_values_per_head = orthog_projected_values_per_head
        out_dim *= max(1, int(orthog_projected_values) + int(orthog_projected_values_per_head))

        if project_out is None:
            project_out = heads > 1 or dim != dim_out or on_attn
        if project_out and on_attn:
            self.to_out: nn.Module = nn.Sequential(nn.Linear(out_dim, dim_out * 2, bias=out_bias), nn.GLU())
        elif project_out:
            self.to_out = nn.Linear(out_dim, dim_out, bias=out_bias)
        elif out_dim != dim_out:
            raise ValueError(
                f"without an output projection the attention output ({out_dim}) must have the model dim ({dim_out})"
            )
        else:
            self.to_out = nn.Identity()
        out_linear = self.to_out[0] if isinstance(self.to_out, nn.Sequential) else self.to_out
        if isinstance(out_linear, nn.Linear):
            if zero_init_output:
                nn.init.zeros_(out_linear.weight)
                if out_linear.bias is not None:
                    nn.init.zeros_(out_linear.bias)
            elif output_proj_depth is not None:
                nn.init.normal_(
                    out_linear.weight, std=(2 * out_linear.in_features * output_proj_depth) ** -0.5
                )

    def forward(
        self,
        x: Tensor,
        *,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        rel_pos: nn.Module | None = None,
        pos: Tensor | None = None,
        rotary_pos_emb: tuple[Tensor, Tensor | float] | None = None,
        prev_attn: Tensor | None = None,
        mem: Tensor | None = None,
        mem_mask: Tensor | None = None,
        cache: AttentionIntermediates | None = None,
        need_logits: bool = False,
        causal: bool | None = None,
        context_rotary_pos_emb: tuple[Tensor, Tensor | float] | None = None,
        value_residual: Tensor | None = None,
        polar_pos_emb: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, AttentionIntermediates]:
        has_context = context is not None
        if self.qkv_receive_diff_residuals:
            if has_context:
                _refuse("attention option 'qkv_receive_diff_residuals' works on self-attention only")
            x, k_input, v_input = x.unbind(0)
        else:
            k_input = v_input = context if has_context else x
        b, n = x.shape[:2]
        mem_len = 0
        if mem is not None:
            mem_len = mem.shape[-2]
            k_input, v_input = torch.cat((mem, k_input), dim=-2), torch.cat((mem, v_input), dim=-2)

        q_input = x if self.to_latent_q is None else self.to_latent_q(x)
        latent_cache = None
        if self.to_latent_kv is not None:
            latent = self.to_latent_kv(k_input)
            k_sub = None
            if self.to_rotateable_k is not None:
                k_sub = self.to_rotateable_k(k_input).unflatten(-1, (-1, self.dim_head)).transpose(1, 2)
            if cache is not None and cache.cached_kv is not None:
                cached_latent, cached_sub = cache.cached_kv
                latent = torch.cat((cached_latent, latent), dim=-2)
                if k_sub is not None:
                    k_sub = torch.cat((cached_sub, k_sub), dim=-2)
            # the cache holds (latent, rotated sub-heads); an empty sub-head tensor keeps both slicable
            latent_cache = (
                latent,
                k_sub if k_sub is not None else latent.new_zeros(b, 0, latent.shape[-2], self.dim_head),
            )
            k_input = v_input = latent

        # self-attention over one input: one matmul over the stacked weights (see `_fused_qkv_weight`)
        fused_weight = self._fused_qkv_weight() if k_input is x and v_input is x else None
        qk_rotated = False
        if fused_weight is not None:
            qkv = F.linear(x, fused_weight).unflatten(-1, (3, self.heads, self.dim_head))
            qk, v = qkv.split((2, 1), dim=2)
            v = v.squeeze(2).transpose(1, 2)
            k_unrotated = None
            if self._rotate_qk_together(rotary_pos_emb, cache):
                # queries and keys rotated in one pass; the cache keeps the keys unrotated, as below
                k_unrotated = qk[:, :, 1].transpose(1, 2)
                qk = apply_rotary_to_qk(qk, rotary_pos_emb[0])
                qk_rotated = True
            q, k = (t.transpose(1, 2) for t in qk.unbind(2))
        else:
            q = self.to_q(q_input).unflatten(-1, (self.heads, -1)).transpose(1, 2)
            k = self.to_k(k_input).unflatten(-1, (-1, self.dim_head)).transpose(1, 2)
            v = self.to_v(v_input).unflatten(-1, (-1, self.value_dim_head)).transpose(1, 2)
        if latent_cache is not None and self.to_rotateable_k is not None:
            k = torch.cat((k, latent_cache[1]), dim=1)
        values = v

        if value_residual is not None:  # ResFormer: mix in the first layer's values
            if latent_cache is not None and cache is not None and self.to_value_residual_mix is not None:
                # the per-token mix of the new tokens would be applied to every cached position (2.31.10 does)
                _refuse("a learned value-residual mix cannot be combined with 'use_latent_kv' and a kv cache")
            mix = 0.5
            if self.to_value_residual_mix is not None:
                mix = self.to_value_residual_mix(x).transpose(1, 2)[..., None]
            v = value_residual.lerp(v, mix)

        if self.qk_norm:
            q, k = _l2norm(q, self.qk_norm_groups), _l2norm(k, self.qk_norm_groups)
            if self.qk_norm_q_scale is not None:
                q, k = q * self.qk_norm_q_scale, k * self.qk_norm_k_scale
        if self.q_rmsnorm is not None:
            q = self.q_rmsnorm(q)
        if self.k_rmsnorm is not None:
            k = self.k_rmsnorm(k)
        if self.value_rmsnorm is not None:
            v = self.value_rmsnorm(v)

        if cache is not None and not self.can_cache_kv:
            _refuse("attention option 'selective' cannot be used with a key/value cache")
        if latent_cache is not None:
            cached_kv = latent_cache
        else:
            if cache is not None and cache.cached_kv is not None:
                if mem is not None:
                    raise ValueError("a key/value cache cannot be combined with Transformer-XL memories")
                cached_k, cached_v = cache.cached_kv
                k, v = torch.cat((cached_k, k), dim=-2), torch.cat((cached_v, v), dim=-2)
            cached_kv = (k_unrotated if qk_rotated else k[..., mem_len:, :], v[..., mem_len:, :])

        if (
            not qk_rotated  # the fused projection's queries and keys were rotated already
            and rotary_pos_emb is not None
            and (not has_context or context_rotary_pos_emb is not None)
        ):
            freqs, xpos_scale = rotary_pos_emb
            q_scale, k_scale = (xpos_scale, xpos_scale**-1.0) if torch.is_tensor(xpos_scale) else (1.0, 1.0)
            k_freqs = freqs
            if has_context:  # cross-attention: the keys take the context's positions (`context_pos`)
                k_freqs, k_xpos = context_rotary_pos_emb
                k_scale = k_xpos**-1.0 if torch.is_tensor(k_xpos) else 1.0
            rot = self.rotate_num_heads
            if rot < self.heads:  # only the last `rotate_num_heads` heads are rotated
                q = torch.cat((q[:, :-rot], apply_rotary(q[:, -rot:], freqs, q_scale)), dim=1)
                k = torch.cat((k[:, :-rot], apply_rotary(k[:, -rot:], k_freqs, k_scale)), dim=1)
            else:
                q = apply_rotary(q, freqs, q_scale)
                k = apply_rotary(k, k_freqs, k_scale)
                if self.rotate_values and not has_context:
                    v = apply_rotary(v, freqs, k_scale)
        if polar_pos_emb is not None:  # PoPE: q and k become magnitude (softplus) times a phase, 2 x dim_head
            if self.num_mem_kv:
                _refuse("polar_pos_emb cannot be combined with attention option 'num_mem_kv'")
            freqs, bias = polar_pos_emb
            q, k = _apply_polar(q, freqs), _apply_polar(k, freqs + bias)

        key_mask = context_mask
        if key_mask is None and not has_context:
            key_mask = mask
            if mem is not None and (key_mask is not None or mem_mask is not None):
                if mem_mask is None:
                    mem_mask = torch.ones((b, mem_len), dtype=torch.bool, device=x.device)
                if key_mask is None:
                    key_mask = torch.ones((b, n), dtype=torch.bool, device=x.device)
                key_mask = torch.cat((mem_mask, key_mask), dim=-1)

        i, j = q.shape[-2], k.shape[-2]
        num_mem_kv = self.num_mem_kv
        if num_mem_kv:  # learned memory keys/values in front of the sequence, visible to every query
            mem_k = self.mem_k.expand(b, -1, -1, -1)
            if self.qk_norm:
                mem_k = _l2norm(mem_k, self.qk_norm_groups)
                if self.qk_norm_k_scale is not None:
                    mem_k = mem_k * self.qk_norm_k_scale
            k = torch.cat((mem_k, k), dim=-2)
            v = torch.cat((self.mem_v.expand(b, -1, -1, -1), v), dim=-2)
            if key_mask is not None:
                key_mask = F.pad(key_mask, (num_mem_kv, 0), value=True)

        allowed = None
        if key_mask is not None:
            allowed = key_mask[:, None, None, :]
        if attn_mask is not None:
            extra = attn_mask.reshape((1,) * (4 - attn_mask.ndim) + tuple(attn_mask.shape))
            allowed = extra if allowed is None else allowed & extra
        if self.max_attend_past is not None:
            distance = torch.arange(j - i, j, device=x.device)[:, None] - torch.arange(j, device=x.device)
            near = F.pad(distance <= self.max_attend_past, (num_mem_kv, 0), value=True)[None, None]
            allowed = near if allowed is None else allowed & near

        attn_bias = None
        if rel_pos is not None:
            if pos is not None and isinstance(rel_pos, AlibiPositionalBias):
                attn_bias = rel_pos.forward_custom_pos(pos)
            elif isinstance(rel_pos, (AlibiPositionalBias, RelativePositionBias, DynamicPositionBias)):
                attn_bias = rel_pos(i, j, device=x.device)
            if attn_bias is not None and num_mem_kv:
                attn_bias = F.pad(attn_bias, (num_mem_kv, 0), value=0.0)
        if self.data_dependent_alibi is not None:  # replaces any positional bias, as in x-transformers
            if rel_pos is not None:
                _refuse(
                    "attention option 'data_dependent_alibi' cannot be combined with alibi or relative position bias"
                )
            if j != n or has_context:
                _refuse(
                    "attention option 'data_dependent_alibi' works on self-attention without a cache or memories only"
                )
            attn_bias = F.pad(self.data_dependent_alibi(x), (num_mem_kv, 0), value=0.0)
        if self.rel_proj_pos_bias is not None:
            proj_bias = self.rel_proj_pos_bias(x, k.shape[-2])
            attn_bias = proj_bias if attn_bias is None else attn_bias + proj_bias

        if self.laser:  # LASER: attend over exp(values), then take the log
            v = (v / self.laser_softclamp_value).tanh().mul(self.laser_softclamp_value).exp()

        if self.kv_heads < self.heads:
            repeat = self.heads // self.kv_heads
            k, v = k.repeat(1, repeat, 1, 1), v.repeat(1, repeat, 1, 1)

        options = {
            "scale": self.scale,
            "mask": allowed,
            "causal": (self.causal if causal is None else causal) and not has_context,
            "attn_bias": attn_bias,
            "prev_attn": prev_attn,
            "need_logits": need_logits,
            "float32_softmax": self.float32_softmax,
            "dropout_p": self.dropout if self.training else 0.0,
        }
        if not self.plain_kernel:
            out, inter = self.attend(q, k, v, row_mask=mask, **options)
        else:  # the plain kernel is called directly: option-free models pay nothing for `Attend`
            out, inter = attend(q, k, v, **options)
        if self.laser:
            out = out.clamp(min=1e-20).log()
        if self.head_scale_params is not None:
            out = out * self.head_scale_params
        if self.to_v_head_gate is not None:
            out = out * self.to_v_head_gate(x).sigmoid().transpose(1, 2)[..., None]
        out = out.transpose(1, 2).flatten(-2)
        if self.to_v_gate is not None or self.to_output_gate is not None:
            out = self._gate(out, x)
        if self.orthog_projected_values or self.orthog_projected_values_per_head:
            if has_context or mem is not None:
                _refuse(
                    "attention option 'orthog_projected_values' works on self-attention without memories only"
                )
            groups = self.heads // self.kv_heads
            v_flat = values.transpose(1, 2).repeat(1, 1, groups, 1).flatten(-2)
            parts = [_orthogonal_part(out, v_flat)] * (
                int(self.orthog_projected_values) + int(self.orthog_projected_values_per_head)
            )
            out = torch.cat(parts, dim=-1)
        out = self.to_out(out)
        if self.sublayer_dropout > 0 and self.training:
            out = F.dropout(out, p=self.sublayer_dropout)
        if mask is not None and cache is None:
            out = out.masked_fill(~mask[..., None], 0.0)
        inter.cached_kv = cached_kv
        inter.values = values
        return out, inter

    def _fused_qkv_weight(self) -> Tensor | None:
        """`to_q`, `to_k` and `to_v`'s weights stacked, where one matmul over them computes exactly what the
        three projections do: plain bias-free `nn.Linear`s (no hooks, no parametrization) of one dtype, on
        the CPU, with as many key/value heads as query heads and one head size. None otherwise.

        The stacked weight is built on each call (a copy of the three, small next to the activations), so
        it is never stale and gradients reach the three parameters under their own names."""
        if (
            self.to_latent_q is not None
            or self.to_latent_kv is not None
            or self.qkv_receive_diff_residuals
            or self.kv_heads != self.heads
            or self.value_dim_head != self.dim_head
            or global_hooks()
        ):
            return None
        projections = (self.to_q, self.to_k, self.to_v)
        for linear in projections:
            if type(linear) is not nn.Linear or linear.bias is not None or has_hooks(linear):
                return None
        weights = [linear.weight for linear in projections]
        first = weights[0]
        if first.device.type != "cpu":  # measured on the CPU only: other devices keep three matmuls
            return None
        if any(w.dtype != first.dtype or w.device != first.device for w in weights[1:]):
            return None
        return torch.cat(weights)

    def _rotate_qk_together(
        self,
        rotary_pos_emb: tuple[Tensor, Tensor | float] | None,
        cache: AttentionIntermediates | None,
    ) -> bool:
        """Whether the fused projection's queries and keys can be rotated in one pass right away: rotary
        without xPos on every head, and nothing that acts on the keys or queries before rotary does (qk
        norms, a key/value cache, rotated values)."""
        return (
            rotary_pos_emb is not None
            and not torch.is_tensor(rotary_pos_emb[1])
            and rotary_pos_emb[1] == 1.0
            and self.rotate_num_heads == self.heads
            and not self.rotate_values
            and not self.qk_norm
            and self.q_rmsnorm is None
            and self.k_rmsnorm is None
            and (cache is None or cache.cached_kv is None)
        )

    def _gate(self, out: Tensor, x: Tensor) -> Tensor:
        """Gated attention: sigmoid (or SiLU) gates from the input (`to_v_gate`) and/or the output
        (`to_output_gate`), their logits summed; a headwise gate scales a whole head."""
        headwise = (self.to_v_gate is not None and self.gate_values_headwise) or (
            self.to_output_gate is not None and self.output_gate_headwise
        )
        if not headwise:
            logits = self.to_v_gate(x) if self.to_v_gate is not None else 0.0
            if self.to_output_gate is not None:
                logits = logits + self.to_output_gate(out)
            return out * self.gate_activation(logits)

        def head_space(t: Tensor, per_head: bool) -> Tensor:
            return (
                t.transpose(1, 2)[..., None]
                if per_head
                else t.unflatten(-1, (self.heads, -1)).transpose(1, 2)
            )

        logits: Tensor | float = 0.0
        if self.to_v_gate is not None:
            logits = logits + head_space(self.to_v_gate(x), self.gate_values_headwise)
        if self.to_output_gate is not None:
            logits = logits + head_space(self.to_output_gate(out), self.output_gate_headwise)
        gated = out.unflatten(-1, (self.heads, -1)).transpose(1, 2) * self.gate_activation(logits)
        return gated.transpose(1, 2).flatten(-2)
