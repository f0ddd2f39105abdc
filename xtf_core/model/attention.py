"""Multi-head attention with x-transformers' parameter layout (`to_q`, `to_k`, `to_v`, `to_out`, `to_v_gate`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attend import AttentionIntermediates, attend
from .positions import AlibiPositionalBias, RelativePositionBias, apply_rotary


def _l2norm(t: Tensor, groups: int) -> Tensor:
    t = t.unflatten(-1, (groups, -1))
    return F.normalize(t, p=2, dim=-1).flatten(-2)


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
        gate_values: bool = False,
        gate_values_bias: bool = False,
        rotate_values: bool = False,
        flash: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if kv_heads is not None and one_kv_head:
            raise ValueError("set either attn_one_kv_head or attn_kv_heads, not both")
        kv_heads = 1 if one_kv_head else (kv_heads if kv_heads is not None else heads)
        if heads % kv_heads:
            raise ValueError(f"heads ({heads}) must be divisible by attn_kv_heads ({kv_heads})")
        if qk_norm and (dim_head % qk_norm_groups or dim_head // qk_norm_groups <= 2):
            raise ValueError(f"attn_qk_norm_groups={qk_norm_groups} does not fit dim_head={dim_head}")
        dim_kv = dim_context if dim_context is not None else dim
        self.heads, self.kv_heads, self.dim_head, self.causal = heads, kv_heads, dim_head, causal
        self.qk_norm, self.qk_norm_groups = qk_norm, qk_norm_groups
        self.dropout = dropout
        # attention always runs on scaled_dot_product_attention where the options allow (x-transformers'
        # `attn_flash` chose that path); the flag is kept so specs round-trip and incompatible options are refused
        self.flash = flash

        self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_k = nn.Linear(dim_kv, dim_head * kv_heads, bias=False)
        self.to_v = nn.Linear(dim_kv, dim_head * kv_heads, bias=False)
        self.to_v_gate = nn.Linear(dim, dim_head * heads, bias=gate_values_bias) if gate_values else None
        self.rotate_values = rotate_values

        self.scale = dim_head**-0.5
        if qk_norm and qk_norm_dim_scale:
            self.qk_norm_q_scale = nn.Parameter(torch.ones(heads, 1, dim_head) * dim_head**0.25)
            self.qk_norm_k_scale = nn.Parameter(torch.ones(kv_heads, 1, dim_head) * dim_head**0.25)
        elif qk_norm:
            self.scale = qk_norm_scale
        self.float32_softmax = not qk_norm

        if heads > 1:
            self.to_out = nn.Linear(dim_head * heads, dim, bias=False)
        elif dim_head != dim:
            raise ValueError(
                f"with heads=1 there is no output projection, so dim_head ({dim_head}) must equal dim ({dim})"
            )
        else:
            self.to_out = nn.Identity()

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
    ) -> tuple[Tensor, AttentionIntermediates]:
        b, n = x.shape[:2]
        has_context = context is not None
        kv_input = context if has_context else x
        mem_len = 0
        if mem is not None:
            mem_len = mem.shape[-2]
            kv_input = torch.cat((mem, kv_input), dim=-2)

        q = self.to_q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k = self.to_k(kv_input).unflatten(-1, (self.kv_heads, -1)).transpose(1, 2)
        v = self.to_v(kv_input).unflatten(-1, (self.kv_heads, -1)).transpose(1, 2)

        if self.qk_norm:
            q, k = _l2norm(q, self.qk_norm_groups), _l2norm(k, self.qk_norm_groups)
            if hasattr(self, "qk_norm_q_scale"):
                q, k = q * self.qk_norm_q_scale, k * self.qk_norm_k_scale

        if cache is not None and cache.cached_kv is not None:
            if mem is not None:
                raise ValueError("a key/value cache cannot be combined with Transformer-XL memories")
            cached_k, cached_v = cache.cached_kv
            k, v = torch.cat((cached_k, k), dim=-2), torch.cat((cached_v, v), dim=-2)
        cached_kv = (k[..., mem_len:, :], v[..., mem_len:, :])

        if rotary_pos_emb is not None and not has_context:
            freqs, xpos_scale = rotary_pos_emb
            q_scale, k_scale = (xpos_scale, xpos_scale**-1.0) if torch.is_tensor(xpos_scale) else (1.0, 1.0)
            q = apply_rotary(q, freqs, q_scale)
            k = apply_rotary(k, freqs, k_scale)
            if self.rotate_values:
                v = apply_rotary(v, freqs, k_scale)

        key_mask = context_mask
        if key_mask is None and not has_context:
            key_mask = mask
            if mem is not None and (key_mask is not None or mem_mask is not None):
                if mem_mask is None:
                    mem_mask = torch.ones((b, mem_len), dtype=torch.bool, device=x.device)
                if key_mask is None:
                    key_mask = torch.ones((b, n), dtype=torch.bool, device=x.device)
                key_mask = torch.cat((mem_mask, key_mask), dim=-1)

        allowed = None
        if key_mask is not None:
            allowed = key_mask[:, None, None, :]
        if attn_mask is not None:
            extra = attn_mask.reshape((1,) * (4 - attn_mask.ndim) + tuple(attn_mask.shape))
            allowed = extra if allowed is None else allowed & extra

        i, j = q.shape[-2], k.shape[-2]
        attn_bias = None
        if rel_pos is not None:
            if pos is not None and isinstance(rel_pos, AlibiPositionalBias):
                attn_bias = rel_pos.forward_custom_pos(pos)
            elif isinstance(rel_pos, (AlibiPositionalBias, RelativePositionBias)):
                attn_bias = rel_pos(i, j, device=x.device)

        if self.kv_heads < self.heads:
            repeat = self.heads // self.kv_heads
            k, v = k.repeat(1, repeat, 1, 1), v.repeat(1, repeat, 1, 1)

        out, inter = attend(
            q,
            k,
            v,
            scale=self.scale,
            mask=allowed,
            causal=self.causal and not has_context,
            attn_bias=attn_bias,
            prev_attn=prev_attn,
            need_logits=need_logits,
            float32_softmax=self.float32_softmax,
            dropout_p=self.dropout if self.training else 0.0,
        )
        out = out.transpose(1, 2).flatten(-2)
        if self.to_v_gate is not None:
            out = out * self.to_v_gate(x).sigmoid()
        out = self.to_out(out)
        if mask is not None and cache is None:
            out = out.masked_fill(~mask[..., None], 0.0)
        inter.cached_kv = cached_kv
        return out, inter
