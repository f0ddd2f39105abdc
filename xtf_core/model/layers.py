"""The attention stack (`AttentionLayers`, `Encoder`, `Decoder`, `CrossAttender`).

State-dict layout, as in x-transformers 2.31: `layers.{i}.0.{0,1,2}` are the pre-branch, post-branch
(sandwich) and post-main norms of block i, `layers.{i}.1` is the attention or feed-forward module;
`final_norm`, `rotary_pos_emb.inv_freq` and `rel_pos.*` sit beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import SpecError
from .attend import AttentionIntermediates
from .attention import Attention
from .feedforward import FeedForward
from .layer_plan import LAYER_OPTIONS, LayerOptions, layer_types_for
from .norms import LayerNorm, norm_class
from .options import split_prefixed
from .positions import AlibiPositionalBias, RelativePositionBias, RotaryEmbedding
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
        if isinstance(layer_kwargs.get("custom_layers"), list):
            layer_kwargs["custom_layers"] = tuple(layer_kwargs["custom_layers"])
        o = LayerOptions(**layer_kwargs)
        self.options = o
        self.dim, self.causal, self.cross_attend = o.dim, o.causal, o.cross_attend
        rotary = o.rotary_pos_emb or o.rotary_xpos
        dim_head = attn_kwargs.get("dim_head", 64)
        self.attn_heads, self.attn_dim_head = o.heads, dim_head
        self.disable_abs_pos_emb = (
            o.disable_abs_pos_emb if o.disable_abs_pos_emb is not None else (o.rel_pos_bias or rotary)
        )
        if sum(map(bool, (o.alibi_pos_bias, o.rel_pos_bias))) > 1:
            raise SpecError(f"{owner}: choose at most one of alibi_pos_bias and rel_pos_bias")
        if sum(map(bool, (o.use_scalenorm, o.use_rmsnorm, o.use_simple_rmsnorm))) > 1:
            raise SpecError(f"{owner}: choose at most one of use_scalenorm, use_rmsnorm, use_simple_rmsnorm")
        if o.rotary_xpos and not o.causal:
            raise SpecError(f"{owner}: rotary_xpos needs causal attention (a Decoder)")
        if o.sandwich_norm and not o.pre_norm:
            raise SpecError(f"{owner}: sandwich_norm needs pre_norm=True")
        if attn_kwargs.get("flash") and (o.residual_attn or o.cross_residual_attn or o.rel_pos_bias):
            raise SpecError(f"{owner}: attn_flash cannot be combined with residual attention or rel_pos_bias")

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
        self.rel_pos: nn.Module | None = None
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
        elif o.alibi_pos_bias:
            alibi_heads = o.alibi_num_heads if o.alibi_num_heads is not None else o.heads
            if alibi_heads > o.heads:
                raise SpecError(f"{owner}: alibi_num_heads ({alibi_heads}) exceeds heads ({o.heads})")
            self.rel_pos = AlibiPositionalBias(alibi_heads, o.heads)

        norm_cls = norm_class(
            use_rmsnorm=o.use_rmsnorm, use_scalenorm=o.use_scalenorm, use_simple_rmsnorm=o.use_simple_rmsnorm
        )

        def make_norm(final: bool = False) -> nn.Module:
            if norm_cls is LayerNorm or (final and o.xtf_final_norm_layernorm):
                return LayerNorm(o.dim, unit_offset=o.norm_add_unit_offset, bias=o.xtf_norm_bias)
            return norm_cls(o.dim, unit_offset=o.norm_add_unit_offset)

        self.layer_types = layer_types_for(o)
        self.num_attn_layers = self.layer_types.count("a")
        self.depth = o.depth if o.depth is not None else len(self.layer_types)
        self.pre_norm, self.residual_attn, self.cross_residual_attn = (
            o.pre_norm,
            o.residual_attn,
            o.cross_residual_attn,
        )
        cross_kwargs = {**attn_kwargs, **cross_kwargs}
        cross_kwargs.pop("gate_values_bias", None)
        self.layers = nn.ModuleList()
        attn_kwargs = {**attn_kwargs, "gate_values_bias": o.xtf_gate_values_bias}
        for index, layer_type in enumerate(self.layer_types):
            is_last = index == len(self.layer_types) - 1
            if layer_type == "a":
                block: nn.Module = Attention(
                    o.dim,
                    heads=o.heads,
                    causal=o.causal,
                    rotate_values=o.xtf_rotary_values,
                    out_bias=o.xtf_attn_out_bias,
                    **attn_kwargs,
                )
            elif layer_type == "c":
                if not o.cross_attend:
                    raise SpecError(f"{owner}: custom_layers has 'c' but cross_attend is False")
                block = Attention(
                    o.dim,
                    heads=o.heads,
                    **cross_kwargs,
                    gate_values_bias=o.xtf_gate_values_bias,
                    out_bias=o.xtf_attn_out_bias,
                )
            else:
                block = FeedForward(o.dim, **ff_kwargs)
            norms = nn.ModuleList(
                [
                    make_norm() if o.pre_norm else None,
                    make_norm() if o.sandwich_norm else None,
                    make_norm(final=is_last) if not o.pre_norm else None,
                ]
            )
            self.layers.append(nn.ModuleList([norms, block]))
        self.final_norm = (
            make_norm(final=True) if (o.pre_norm and o.pre_norm_has_final_norm) else nn.Identity()
        )
        self.can_cache_kv = True

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
    ) -> Tensor | tuple[Tensor, LayerIntermediates]:
        if self.cross_attend != (context is not None):
            raise ValueError("context must be passed if and only if cross_attend=True")
        if seq_pos_offset is None:
            seq_pos_offset = cache.cache_length if cache is not None else 0
        mems_left = list(mems) if mems is not None else []
        mem_masks_left = list(mem_masks) if mem_masks is not None else []
        if mems is not None and len(mems_left) != self.num_attn_layers:
            raise ValueError(
                f"expected {self.num_attn_layers} memories (one per self-attention layer), got {len(mems_left)}"
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
            caches = list(cache.attn_intermediates)
        cache_iter = iter(caches)
        next_cache_length = x.shape[1]

        hiddens: list[Tensor] = []
        inters: list[AttentionIntermediates] = []
        prev_attn = prev_cross_attn = None
        need_logits = return_attn or self.residual_attn
        for layer_type, (norms, block) in zip(self.layer_types, self.layers):
            pre_branch_norm, post_branch_norm, post_main_norm = norms
            layer_mem = layer_mem_mask = None
            if layer_type == "a":
                hiddens.append(x)
                layer_mem = mems_left.pop(0) if mems_left else None
                layer_mem_mask = mem_masks_left.pop(0) if mem_masks_left else None
            residual = x
            if pre_branch_norm is not None:
                x = pre_branch_norm(x)
                if layer_mem is not None and not self.options.xtf_unnormed_mems:
                    layer_mem = pre_branch_norm(layer_mem)
            if layer_type == "a":
                out, inter = block(
                    x,
                    mask=mask,
                    context_mask=self_attn_kv_mask,
                    attn_mask=attn_mask,
                    rel_pos=self.rel_pos,
                    pos=pos,
                    rotary_pos_emb=rotary,
                    prev_attn=prev_attn,
                    mem=layer_mem,
                    mem_mask=layer_mem_mask,
                    cache=next(cache_iter, None),
                    need_logits=need_logits,
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
                )
            else:
                out, inter = block(x), None
            if post_branch_norm is not None:
                out = post_branch_norm(out)
            x = out + residual
            if inter is not None:
                inter.layer_type = layer_type
                inters.append(inter)
                if layer_type == "a" and self.residual_attn:
                    prev_attn = inter.pre_softmax_attn
                elif layer_type == "c" and self.cross_residual_attn:
                    prev_cross_attn = inter.pre_softmax_attn
            if post_main_norm is not None:
                x = post_main_norm(x)

        x = self.final_norm(x)
        if not return_hiddens:
            return x
        return x, LayerIntermediates(
            hiddens=hiddens,
            last_hidden=x,
            attn_intermediates=inters,
            cache_length=next_cache_length + prev_cache_length,
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
