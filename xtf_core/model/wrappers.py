"""The model wrappers: `TransformerWrapper` (tokens), `ContinuousTransformerWrapper` (vectors), `XTransformer`."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SpecError, UnsupportedOptionError
from .attention import Attention
from .autoregressive import AutoregressiveWrapper
from .layers import AttentionLayers, Decoder, Encoder, LayerIntermediates
from .norms import LayerNorm
from .options import nearest, parse_options, unsupported
from .positions import AbsolutePositionalEmbedding, ScaledSinusoidalEmbedding, TokenEmbedding
from .spec_record import SpecRecorder


class _ZeroPositions(nn.Module):
    def forward(self, x: Tensor, **_: Any) -> float:
        return 0.0


def _take_mems(
    hiddens: list[Tensor], mems: list[Tensor] | tuple[Tensor, ...] | None, max_mem_len: int, detach: bool
) -> list[Tensor]:
    """Transformer-XL memories: previous memories + this step's layer inputs, the last `max_mem_len` kept."""
    new = [torch.cat(pair, dim=-2) for pair in zip(mems, hiddens)] if mems is not None else list(hiddens)
    new = [t[..., t.shape[-2] - min(max_mem_len, t.shape[-2]) :, :] for t in new]
    return [t.detach() for t in new] if detach else new


def _prepend(
    x: Tensor, mask: Tensor | None, embeds: Tensor, embeds_mask: Tensor | None, seq: int
) -> tuple[Tensor, Tensor | None]:
    """Put `embeds` before the sequence; extend the mask (all True where a side has none) if either has one."""
    if embeds_mask is not None or mask is not None:
        ones = torch.ones
        mask = mask if mask is not None else ones((x.shape[0], seq), device=x.device, dtype=torch.bool)
        if embeds_mask is None:
            embeds_mask = ones(embeds.shape[:2], device=x.device, dtype=torch.bool)
        mask = torch.cat((embeds_mask, mask), dim=-1)
    return torch.cat((embeds, x), dim=-2), mask


def _positions(
    use_abs: bool, scaled_sinu: bool, dim: int, max_seq_len: int | None, layers: AttentionLayers
) -> nn.Module:
    if not max_seq_len or not (use_abs and not layers.disable_abs_pos_emb):
        return _ZeroPositions()
    if scaled_sinu:
        return ScaledSinusoidalEmbedding(dim)
    return AbsolutePositionalEmbedding(dim, max_seq_len)


def _require_layers(owner: str, attn_layers: Any) -> AttentionLayers:
    if not isinstance(attn_layers, AttentionLayers):
        raise SpecError(
            f"{owner}: 'attn_layers' must be an xtf Encoder, Decoder, CrossAttender or AttentionLayers"
        )
    return attn_layers


@dataclass
class WrapperOptions:
    """TransformerWrapper options the core implements, with x-transformers 2.31's defaults."""

    num_tokens: int
    max_seq_len: int
    attn_layers: Any
    embed_num_tokens: dict[str, int] = field(default_factory=dict)
    emb_dim: int | None = None
    max_mem_len: int = 0
    shift_mem_down: int = 0
    emb_dropout: float = 0.0
    post_emb_norm: bool = False
    num_memory_tokens: int | None = None
    memory_tokens_interspersed_every: int | None = None
    tie_embedding: bool = False
    tie_embedding_scale: float | None = None
    logits_dim: int | None = None
    return_only_embed: bool = False
    num_output_heads: int = 1
    use_abs_pos_emb: bool = True
    scaled_sinu_pos_emb: bool = False
    l2norm_embed: bool = False
    emb_frac_gradient: float = 1.0
    attn_z_loss_weight: float = 1e-4  # stored only: x-transformers 2.31 reads the forward keyword instead
    average_pool_embed: bool = False
    use_cls_token: bool = False
    num_cls_tokens: int = 1
    attn_pool: bool = False
    num_pooled_tokens: int = 1
    attn_pool_depth: int = 1
    dim_pooled_tokens: int | None = None
    squeeze_out_last_dim: bool = False
    mixture_of_softmax: bool = False
    mixture_of_softmax_k: int = 4
    sigsoftmax_logits: bool = False
    add_continuous_pred_head: bool = False
    input_not_include_cache: bool = False
    # Legacy behaviours, set only by migrations of old x-transformers checkpoints.
    xtf_logits_bias: bool = False  # to_logits has a bias (x-transformers < 1.27)
    xtf_norm_bias: bool = False  # post_emb_norm is a LayerNorm with bias (< 1.27)


class AttentionPool(nn.Module):
    """Learned queries cross-attending to the final hiddens (`attn_pool=True`): one attention, or a stack."""

    def __init__(
        self, dim: int, dim_context: int, num_pooled_tokens: int, depth: int, heads: int, dim_head: int
    ):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_pooled_tokens, dim) * 1e-2)
        self.depth = depth
        if depth > 1:
            from .layers import CrossAttender

            self.pooler: nn.Module = CrossAttender(
                dim=dim, cross_attn_dim_context=dim_context, depth=depth, heads=heads, attn_dim_head=dim_head
            )
        else:
            self.pooler = Attention(dim, heads=heads, dim_head=dim_head, dim_context=dim_context)

    def forward(self, context: Tensor, mask: Tensor | None = None) -> Tensor:
        queries = self.queries.expand(context.shape[0], -1, -1)
        if self.depth > 1:
            return self.pooler(queries, context, context_mask=mask)
        out, _ = self.pooler(queries, context=context, context_mask=mask)
        return out


def _masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the sequence, counting only positions where `mask` is True."""
    if mask is None:
        return x.mean(dim=1)
    weights = mask[..., None].to(x.dtype)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-5)


def z_loss(pre_softmax_attns: list[Tensor], weight: float = 1.0) -> Tensor:
    """Squared log-partition of every attention row (summed over layers, then heads), averaged, times `weight`."""
    lse: Tensor | float = 0.0
    for attn in pre_softmax_attns:
        lse = lse + attn.logsumexp(dim=-1)
    assert isinstance(lse, Tensor)
    return lse.square().sum(dim=1).mean() * weight


def check_forward_kwargs(
    owner: str, kwargs: dict[str, Any], target: Any, *, passed: tuple[str, ...] = (), also: Any = ()
) -> None:
    """Forward keywords the wrapper hands on must be ones `target` takes; others are refused by name."""
    accepted = set(inspect.signature(target).parameters) - {"self", "x"} - set(passed)
    for key, value in kwargs.items():
        if key not in accepted:
            refuse_forward(owner, key, value, accepted | set(also))


def _own_keywords(module: nn.Module) -> set[str]:
    return set(inspect.signature(module.forward).parameters) - {"kwargs", "x"}


def refuse_method(owner: str, name: str) -> NoReturn:
    raise UnsupportedOptionError(f"{owner}.{name}() is not supported by the xtf core")


def refuse_forward(owner: str, key: str, value: Any, accepted: set[str] | frozenset[str]) -> NoReturn:
    hint = nearest(key, accepted)
    raise UnsupportedOptionError(
        f"{owner}.forward: keyword '{key}' is not supported by the xtf core"
        + (f"; did you mean '{hint}'?" if hint else "; remove it")
    )


# Forward keywords of x-transformers 2.31's TransformerWrapper that this core accepts only at a value that
# changes nothing (the features behind them are not implemented).
_NEUTRAL_FORWARD = {
    "recycle_steps": None,
    "looped_steps": None,
    "max_looped_steps": None,
    "looped_pred_all_logits": None,
    "looped_inference": False,
    "looped_exit_prob_threshold": 0.9,
    "transform_block_inputs": None,
    "token_emb_kwargs": {},
    "to_logits_kwargs": {},
}


class TransformerWrapper(SpecRecorder, nn.Module):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        owner = "TransformerWrapper"
        self._record_spec(kwargs)
        o = parse_options(owner, kwargs, WrapperOptions)
        layers = _require_layers(owner, o.attn_layers)
        dim = layers.dim
        emb_dim = o.emb_dim if o.emb_dim is not None else dim
        self.emb_dim = emb_dim
        self.num_tokens, self.max_seq_len, self.max_mem_len = o.num_tokens, o.max_seq_len, o.max_mem_len
        self.shift_mem_down = o.shift_mem_down
        self.l2norm_embed = o.l2norm_embed
        self.token_emb = TokenEmbedding(emb_dim, o.num_tokens)
        self.pos_emb = _positions(o.use_abs_pos_emb, o.scaled_sinu_pos_emb, emb_dim, o.max_seq_len, layers)
        self.l2norm_pos = o.l2norm_embed and isinstance(self.pos_emb, AbsolutePositionalEmbedding)
        self.embeds = (
            nn.ModuleDict(
                {f"{name}_embed": nn.Embedding(n, emb_dim) for name, n in o.embed_num_tokens.items()}
            )
            if o.embed_num_tokens
            else None
        )
        if not 0 < o.emb_frac_gradient <= 1:
            raise SpecError(f"{owner}: emb_frac_gradient must be in (0, 1], got {o.emb_frac_gradient}")
        self.emb_frac_gradient = o.emb_frac_gradient
        self.attn_z_loss_weight = o.attn_z_loss_weight
        self.post_emb_norm = LayerNorm(emb_dim, bias=o.xtf_norm_bias) if o.post_emb_norm else nn.Identity()
        self.emb_dropout = nn.Dropout(o.emb_dropout)
        self.project_emb = nn.Linear(emb_dim, dim) if emb_dim != dim else nn.Identity()
        self.attn_layers = layers
        if o.num_output_heads < 1:
            raise SpecError(f"{owner}: num_output_heads must be at least 1")
        if o.average_pool_embed and o.use_cls_token:
            raise SpecError(f"{owner}: choose at most one of average_pool_embed and use_cls_token")
        if o.use_cls_token and o.attn_pool:
            raise SpecError(f"{owner}: choose at most one of use_cls_token and attn_pool")
        self.num_cls_tokens = o.num_cls_tokens
        self.cls_token = nn.Parameter(torch.randn(o.num_cls_tokens, dim) * 0.02) if o.use_cls_token else None
        self.attn_pool = (
            AttentionPool(
                o.dim_pooled_tokens if o.dim_pooled_tokens is not None else dim,
                dim,
                o.num_pooled_tokens,
                o.attn_pool_depth,
                layers.attn_heads,
                layers.attn_dim_head,
            )
            if o.attn_pool
            else None
        )
        self.average_pool_embed = o.average_pool_embed
        self.output_is_log_prob = o.mixture_of_softmax
        self.mixture_k = o.mixture_of_softmax_k
        if o.mixture_of_softmax:
            if o.num_output_heads != 1:
                raise SpecError(f"{owner}: mixture_of_softmax needs num_output_heads=1")
            self.to_mixture: nn.Module | None = nn.Sequential(
                nn.Linear(dim, dim * o.mixture_of_softmax_k, bias=False)
            )
            self.combine_mixture: nn.Module | None = nn.Linear(dim, o.mixture_of_softmax_k, bias=False)
        else:
            self.to_mixture = self.combine_mixture = None
        self.sigsoftmax_logits = o.sigsoftmax_logits
        self.tie_embedding = o.tie_embedding
        self.tie_embedding_scale = o.tie_embedding_scale if o.tie_embedding_scale is not None else dim**-0.5
        if o.tie_embedding and emb_dim != dim:
            raise SpecError(f"{owner}: tie_embedding needs emb_dim == dim ({emb_dim} != {dim})")
        logits_dim = o.logits_dim if o.logits_dim is not None else o.num_tokens
        self.has_multiple_heads = o.num_output_heads > 1 and not o.return_only_embed and not o.tie_embedding
        if o.return_only_embed or o.tie_embedding:
            self.to_logits: nn.Module | None = None
        elif o.num_output_heads > 1:
            self.to_logits = nn.ModuleList(
                [nn.Linear(dim, logits_dim, bias=o.xtf_logits_bias) for _ in range(o.num_output_heads)]
            )
        else:
            self.to_logits = nn.Linear(dim, logits_dim, bias=o.xtf_logits_bias)
        self.return_only_embed = o.return_only_embed
        self.add_continuous_pred_head = o.add_continuous_pred_head
        if o.add_continuous_pred_head:
            self.to_next_embed_pred = nn.Sequential(
                nn.Linear(dim, dim, bias=False), nn.SiLU(), nn.Linear(dim, dim, bias=False)
            )
        self.num_memory_tokens = o.num_memory_tokens or 0
        if self.num_memory_tokens > 0:
            self.memory_tokens = nn.Parameter(torch.randn(self.num_memory_tokens, dim))
        self.memory_tokens_interspersed_every = o.memory_tokens_interspersed_every
        self.squeeze_out_last_dim = o.squeeze_out_last_dim
        self.input_not_include_cache = o.input_not_include_cache
        self.looped = False  # x-transformers' looped LM is not implemented (refused at construction)
        self.can_cache_kv = self.num_memory_tokens == 0 and layers.can_cache_kv
        self.can_cache_kv_outside_max_seq_len = isinstance(self.pos_emb, _ZeroPositions)

    def attn_qk_clip_(self, intermediates: Any, tau: float = 100.0) -> None:
        """x-transformers' MuonClip weight rescaling: not implemented (refused by name)."""
        refuse_method("TransformerWrapper", "attn_qk_clip_")

    def muon_parameters(self) -> Any:
        """x-transformers' Muon optimiser parameter groups: not implemented (refused by name)."""
        refuse_method("TransformerWrapper", "muon_parameters")

    def _head(self, x: Tensor) -> Any:
        if self.tie_embedding:
            return (x @ self.token_emb.emb.weight.t()) * self.tie_embedding_scale
        assert self.to_logits is not None
        if self.has_multiple_heads:
            return tuple(head(x) for head in self.to_logits)  # type: ignore[union-attr]
        return self.to_logits(x)

    def _logits(self, x: Tensor) -> Any:
        """Hidden states to logits: mixture of softmaxes, output heads, sigsoftmax, squeeze."""
        combine = None
        if self.to_mixture is not None and self.combine_mixture is not None:
            combine = self.combine_mixture(x).softmax(dim=-1)
            x = self.to_mixture(x).unflatten(-1, (self.mixture_k, -1))
        logits = self._head(x)
        if self.sigsoftmax_logits:
            logits = logits + logits.sigmoid().log()
        if combine is not None:
            probs = logits.float().softmax(dim=-1)
            mixed = torch.einsum("...kd,...k->...d", probs, combine.float())
            logits = mixed.clamp(min=1e-20).log()
        if self.squeeze_out_last_dim:
            heads = logits if isinstance(logits, tuple) else (logits,)
            heads = tuple(t.squeeze(-1) if t.shape[-1] == 1 else t for t in heads)
            logits = heads if self.has_multiple_heads else heads[0]
        return logits

    def forward(
        self,
        x: Tensor | None,
        return_embeddings: bool = False,
        return_logits_and_embeddings: bool = False,
        return_intermediates: bool = False,
        return_embeddings_and_intermediates: bool = False,
        return_logit_entropies: bool = False,
        return_next_embed_pred: bool = False,
        mask: Tensor | None = None,
        return_mems: bool = False,
        return_attn: bool = False,
        mems: list[Tensor] | tuple[Tensor, ...] | None = None,
        mem_masks: list[Tensor] | None = None,
        detach_mems: bool = True,
        pos: Tensor | None = None,
        prepend_embeds: Tensor | None = None,
        prepend_mask: Tensor | None = None,
        excise_prepend_embeds: bool = False,
        embed_ids: dict[str, Tensor] | None = None,
        sum_embeds: Tensor | None = None,
        transform_token_embeds: Any = None,
        return_attn_z_loss: bool = False,
        attn_z_loss_weight: float = 1e-4,
        seq_start_pos: Tensor | None = None,
        cache: LayerIntermediates | None = None,
        input_not_include_cache: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        owner = "TransformerWrapper"
        for key, neutral in _NEUTRAL_FORWARD.items():
            if key in kwargs:
                value = kwargs.pop(key)
                if value != neutral and not (key == "looped_pred_all_logits" and not self.looped):
                    refuse_forward(owner, key, value, set())
        if kwargs:
            check_forward_kwargs(
                owner, kwargs, self.attn_layers.forward, passed=_PASSED_TO_LAYERS, also=_own_keywords(self)
            )
        if input_not_include_cache is None:
            input_not_include_cache = self.input_not_include_cache
        if x is None:
            if prepend_embeds is None:
                raise ValueError("pass token ids, or prepend_embeds alone")
            x = torch.empty((prepend_embeds.shape[0], 0), dtype=torch.long, device=prepend_embeds.device)
        b, n = x.shape[0], x.shape[1]
        orig_mask = mask
        has_logits_head = self.tie_embedding or self.to_logits is not None
        return_embeddings = return_embeddings or not has_logits_head or return_embeddings_and_intermediates
        seq_pos_offset = cache.cache_length if cache is not None and input_not_include_cache else 0
        external_pos = pos is not None and pos.dtype != torch.long
        if external_pos:
            pos_emb = pos
        else:
            pos_emb = self.pos_emb(x, pos=pos, seq_start_pos=seq_start_pos, offset=seq_pos_offset)
            if self.l2norm_pos:
                pos_emb = F.normalize(pos_emb, dim=-1)
        token_embeds = self.token_emb(x)
        if self.l2norm_embed:
            token_embeds = F.normalize(token_embeds, dim=-1)
        if transform_token_embeds is not None:
            token_embeds = transform_token_embeds(token_embeds)
        x = token_embeds + pos_emb
        embed_ids = embed_ids or {}
        if (self.embeds is not None) != bool(embed_ids):
            raise ValueError("embed_ids must be passed if and only if the wrapper has embed_num_tokens")
        if self.embeds is not None:
            if len(embed_ids) != len(self.embeds):
                raise ValueError(f"embed_ids needs one tensor for each of {sorted(self.embeds)}")
            for name, ids in embed_ids.items():
                x = x + self.embeds[f"{name}_embed"](ids)
        if sum_embeds is not None:
            x = x + sum_embeds
        x = self.post_emb_norm(x)
        if prepend_embeds is not None:
            x, mask = _prepend(x, mask, prepend_embeds, prepend_mask, n)
        if self.emb_frac_gradient < 1:
            x = x * self.emb_frac_gradient + x.detach() * (1 - self.emb_frac_gradient)
        init_embed = x
        x = self.emb_dropout(x)
        x = self.project_emb(x)

        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=-2)
            if mask is not None:
                mask = F.pad(mask, (self.num_cls_tokens, 0), value=True)

        mem_seq = x.shape[-2]
        mem_every = self.memory_tokens_interspersed_every
        if self.num_memory_tokens > 0:
            x, mask = self._add_memory_tokens(x, mask, n)

        if self.shift_mem_down and mems is not None:
            mems = [*mems[self.shift_mem_down :], *mems[: self.shift_mem_down]]

        x, intermediates = self.attn_layers(
            x,
            mask=mask,
            mems=mems,
            mem_masks=mem_masks,
            cache=cache,
            return_hiddens=True,
            return_attn=return_attn or return_attn_z_loss,
            pos=pos if not external_pos else None,
            seq_pos_offset=seq_pos_offset,
            seq_start_pos=seq_start_pos,
            input_not_include_cache=input_not_include_cache,
            **kwargs,
        )
        if self.num_memory_tokens > 0:
            m = self.num_memory_tokens
            if mem_every is not None:
                x = x.reshape(-1, mem_every + m, x.shape[-1])
            intermediates.memory_tokens, x = x[:, :m], x[:, m:]
            if mem_every is not None:
                x = x.reshape(b, -1, x.shape[-1])
            x = x[:, :mem_seq]
        inter: Any = intermediates
        inter.last_layer_hiddens = x
        inter.initial_embeds = init_embed

        if self.average_pool_embed:
            x = _masked_mean(x, orig_mask)
        if self.cls_token is not None:
            x, inter.last_layer_hiddens = x[:, : self.num_cls_tokens], x[:, self.num_cls_tokens :]
            if x.shape[1] == 1:
                x = x[:, 0]
        is_encoder = not self.attn_layers.causal
        return_pooled = self.attn_pool is not None and is_encoder
        pooled = None
        if self.attn_pool is not None and (return_intermediates or is_encoder):
            pooled = self.attn_pool(x, mask=mask)
            inter.attn_pooled_tokens = pooled

        logits = None
        if not return_embeddings or return_logits_and_embeddings:
            logits = self._logits(x)
        if prepend_embeds is not None and excise_prepend_embeds and cache is None:
            length = prepend_embeds.shape[1]
            logits = logits[:, length:] if logits is not None else None
            x = x[:, length:]

        if return_logits_and_embeddings:
            out: Any = (logits, x)
        elif return_embeddings_and_intermediates:
            out = (x, intermediates)
        elif return_embeddings:
            out = x
        elif return_pooled:
            inter.logits = logits
            out = pooled
        else:
            out = logits

        if return_next_embed_pred:
            if not self.add_continuous_pred_head:
                raise ValueError("return_next_embed_pred needs add_continuous_pred_head=True")
            out = (out, (self.to_next_embed_pred(x), init_embed))
        if return_logit_entropies:
            probs = logits.softmax(dim=-1)
            inter.logit_entropies = -(probs * probs.clamp(min=1e-20).log()).sum(dim=-1)
            return_intermediates = True
        if return_attn_z_loss:
            pre = [t.pre_softmax_attn for t in intermediates.attn_intermediates]
            inter.attn_z_loss = z_loss(pre, weight=attn_z_loss_weight)
            return_intermediates = True

        if return_mems:
            new_mems = _take_mems(intermediates.hiddens, mems, self.max_mem_len, detach_mems)
            if not return_intermediates:
                return out, new_mems
            intermediates.mems = new_mems
        if return_intermediates:
            return out, intermediates
        if return_attn:
            return out, [t.post_softmax_attn for t in intermediates.attn_intermediates]
        return out

    def _add_memory_tokens(self, x: Tensor, mask: Tensor | None, n: int) -> tuple[Tensor, Tensor | None]:
        """Memory tokens before the sequence, or before every `memory_tokens_interspersed_every` tokens."""
        b, dim, m = x.shape[0], x.shape[-1], self.num_memory_tokens
        every = self.memory_tokens_interspersed_every
        if every is None:
            x = torch.cat((self.memory_tokens.expand(b, -1, -1), x), dim=-2)
            if mask is not None:
                mask = F.pad(mask, (m, 0), value=True)
            return x, mask
        if every <= 0 or not self.attn_layers.causal:
            raise ValueError("memory_tokens_interspersed_every needs a positive count and a Decoder")
        padded = math.ceil(n / every) * every
        x = F.pad(x, (0, 0, 0, padded - n), value=0.0).reshape(-1, every, dim)
        x = torch.cat((self.memory_tokens.expand(x.shape[0], -1, -1), x), dim=-2)
        return x.reshape(b, -1, dim), mask


# what the wrapper itself passes to the stack, so a caller's keyword of the same name is refused as a duplicate
_PASSED_TO_LAYERS = ("mask", "mems", "mem_masks", "cache", "return_hiddens", "return_attn", "pos", "seq_pos_offset",
                     "seq_start_pos", "input_not_include_cache")  # fmt: skip


@dataclass
class ContinuousWrapperOptions:
    """ContinuousTransformerWrapper options the core implements, with x-transformers 2.31's defaults."""

    attn_layers: Any
    max_seq_len: int | None = None
    dim_in: int | None = None
    dim_out: int | None = None
    max_mem_len: int = 0
    num_memory_tokens: int | None = None
    post_emb_norm: bool = False
    emb_dropout: float = 0.0
    use_abs_pos_emb: bool = True
    scaled_sinu_pos_emb: bool = False
    average_pool_embed: bool = False
    probabilistic: bool = False
    use_identity_if_same_dim: bool = False
    # Legacy behaviours, set only by migrations of old x-transformers checkpoints.
    xtf_project_bias: bool = False  # project_in / project_out have biases (x-transformers < 1.27)
    xtf_norm_bias: bool = False  # post_emb_norm is a LayerNorm with bias (< 1.27)


class ContinuousTransformerWrapper(SpecRecorder, nn.Module):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        owner = "ContinuousTransformerWrapper"
        self._record_spec(kwargs)
        o = parse_options(owner, kwargs, ContinuousWrapperOptions)
        layers = _require_layers(owner, o.attn_layers)
        dim = layers.dim
        self.max_seq_len, self.max_mem_len = o.max_seq_len, o.max_mem_len
        self.pos_emb = _positions(o.use_abs_pos_emb, o.scaled_sinu_pos_emb, dim, o.max_seq_len, layers)
        self.post_emb_norm = LayerNorm(dim, bias=o.xtf_norm_bias) if o.post_emb_norm else nn.Identity()
        self.emb_dropout = nn.Dropout(o.emb_dropout)
        self.num_memory_tokens = o.num_memory_tokens or 0
        if self.num_memory_tokens > 0:
            self.memory_tokens = nn.Parameter(torch.randn(self.num_memory_tokens, dim))
        self.attn_layers = layers
        self.average_pool_embed = o.average_pool_embed
        project_in = o.dim_in is not None and (not o.use_identity_if_same_dim or o.dim_in != dim)
        self.probabilistic = o.probabilistic
        dim_out = o.dim_out * (2 if o.probabilistic else 1) if o.dim_out is not None else None
        project_out = dim_out is not None and (not o.use_identity_if_same_dim or dim_out != dim)
        self.project_in = nn.Linear(o.dim_in, dim, bias=o.xtf_project_bias) if project_in else nn.Identity()
        self.project_out = nn.Linear(dim, dim_out, bias=o.xtf_project_bias) if project_out else nn.Identity()
        self.can_cache_kv = layers.can_cache_kv

    def forward(
        self,
        x: Tensor,
        return_embeddings: bool = False,
        return_intermediates: bool = False,
        return_mems: bool = False,
        mask: Tensor | None = None,
        lens: Tensor | None = None,
        return_attn: bool = False,
        mems: list[Tensor] | tuple[Tensor, ...] | None = None,
        mem_masks: list[Tensor] | None = None,
        pos: Tensor | None = None,
        sum_embeds: Tensor | None = None,
        prepend_embeds: Tensor | None = None,
        prepend_mask: Tensor | None = None,
        cache: LayerIntermediates | None = None,
        input_not_include_cache: bool = False,
        seq_start_pos: Tensor | None = None,
        detach_mems: bool = True,
        **kwargs: Any,
    ) -> Any:
        if kwargs:
            check_forward_kwargs(
                "ContinuousTransformerWrapper",
                kwargs,
                self.attn_layers.forward,
                passed=_PASSED_TO_LAYERS,
                also=_own_keywords(self),
            )
        batch, seq, device = x.shape[0], x.shape[1], x.device
        if lens is not None:
            if mask is not None:
                raise ValueError("pass either `mask` or `lens`, not both")
            mask = torch.arange(seq, device=device)[None, :] < lens[:, None]
        orig_mask = mask
        seq_pos_offset = cache.cache_length if cache is not None and input_not_include_cache else 0
        x = self.project_in(x)
        x = x + self.pos_emb(x, pos=pos, seq_start_pos=seq_start_pos, offset=seq_pos_offset)
        if sum_embeds is not None:
            x = x + sum_embeds
        x = self.post_emb_norm(x)
        if self.num_memory_tokens > 0:
            x = torch.cat((self.memory_tokens.expand(batch, -1, -1), x), dim=-2)
            if mask is not None:
                mask = F.pad(mask, (self.num_memory_tokens, 0), value=True)
        if prepend_embeds is not None:
            x, mask = _prepend(x, mask, prepend_embeds, prepend_mask, seq)
        x = self.emb_dropout(x)
        x, intermediates = self.attn_layers(
            x,
            mask=mask,
            mems=mems,
            mem_masks=mem_masks,
            cache=cache,
            input_not_include_cache=input_not_include_cache,
            seq_pos_offset=seq_pos_offset,
            return_hiddens=True,
            return_attn=return_attn,
            pos=pos,
            **kwargs,
        )
        if self.num_memory_tokens > 0:
            intermediates.memory_tokens, x = x[:, : self.num_memory_tokens], x[:, self.num_memory_tokens :]
        if self.average_pool_embed:
            if orig_mask is None:
                x = x.mean(dim=1)
            else:
                weights = orig_mask[..., None].to(x.dtype)
                x = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-5)
        out = x if return_embeddings else self.project_out(x)
        if not return_embeddings and self.probabilistic:
            mean, log_var = out.unflatten(-1, (-1, 2)).unbind(dim=-1)
            out = torch.stack((mean, log_var.exp()))
        if return_intermediates:
            return out, intermediates
        if return_mems:
            # as in x-transformers 2.31: the new memories are this segment's layer inputs only (the previous
            # memories are not prepended, unlike TransformerWrapper)
            return out, _take_mems(intermediates.hiddens, None, self.max_mem_len, detach_mems)
        if return_attn:
            return out, [t.post_softmax_attn for t in intermediates.attn_intermediates]
        return out


XTRANSFORMER_WRAPPER_KEYS = (
    "num_tokens",
    "max_seq_len",
    "emb_dropout",
    "scaled_sinu_pos_emb",
    "use_abs_pos_emb",
    "xtf_logits_bias",
)


class XTransformer(SpecRecorder, nn.Module):
    """Encoder-decoder: `encoder` (a TransformerWrapper returning embeddings) and `decoder` (autoregressive)."""

    def __init__(self, *, dim: int, **kwargs: Any) -> None:
        super().__init__()
        # record the call as given (like the other classes), so spec_of(build(spec)) == spec
        self._record_spec({"dim": dim, **kwargs})
        tie_token_emb: bool = kwargs.pop("tie_token_emb", False)
        ignore_index: int = kwargs.pop("ignore_index", -100)
        pad_value: int = kwargs.pop("pad_value", 0)
        cross_attn_tokens_dropout: float = kwargs.pop("cross_attn_tokens_dropout", 0.0)
        enc_kwargs = {k[4:]: v for k, v in kwargs.items() if k.startswith("enc_")}
        dec_kwargs = {k[4:]: v for k, v in kwargs.items() if k.startswith("dec_")}
        other = [k for k in kwargs if not k.startswith(("enc_", "dec_"))]
        if other:
            unsupported(
                "XTransformer", other[0], kwargs[other[0]], {"dim", "tie_token_emb", "enc_*", "dec_*"}
            )
        if "dim" in enc_kwargs or "dim" in dec_kwargs:
            raise SpecError("XTransformer: set the dimension with `dim`, not enc_dim/dec_dim")
        enc_wrapper = {
            k: enc_kwargs.pop(k) for k in (*XTRANSFORMER_WRAPPER_KEYS, "num_memory_tokens") if k in enc_kwargs
        }
        dec_wrapper = {k: dec_kwargs.pop(k) for k in XTRANSFORMER_WRAPPER_KEYS if k in dec_kwargs}
        self.cross_attn_tokens_dropout = cross_attn_tokens_dropout
        self.encoder = TransformerWrapper(
            **enc_wrapper, return_only_embed=True, attn_layers=Encoder(dim=dim, **enc_kwargs)
        )
        decoder = TransformerWrapper(
            **dec_wrapper, attn_layers=Decoder(dim=dim, cross_attend=True, **dec_kwargs)
        )
        if tie_token_emb:
            decoder.token_emb = self.encoder.token_emb
        self.decoder = AutoregressiveWrapper(decoder, ignore_index=ignore_index, pad_value=pad_value)

    @torch.no_grad()
    def generate(
        self,
        seq_in: Tensor,
        seq_out_start: Tensor,
        seq_len: int,
        mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        encodings = self.encoder(seq_in, mask=mask, attn_mask=attn_mask, return_embeddings=True)
        return self.decoder.generate(seq_out_start, seq_len, context=encodings, context_mask=mask, **kwargs)

    def forward(
        self,
        src: Tensor,
        tgt: Tensor,
        mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        src_prepend_embeds: Tensor | None = None,
    ) -> Tensor:
        enc = self.encoder(
            src, mask=mask, attn_mask=attn_mask, prepend_embeds=src_prepend_embeds, return_embeddings=True
        )
        if src_prepend_embeds is not None and mask is not None:
            mask = F.pad(mask, (src_prepend_embeds.shape[-2], 0), value=True)
        if self.training and self.cross_attn_tokens_dropout > 0:
            enc, mask = _dropout_seq(enc, mask, self.cross_attn_tokens_dropout)
        return self.decoder(tgt, context=enc, context_mask=mask)


def _dropout_seq(seq: Tensor, mask: Tensor | None, dropout: float) -> tuple[Tensor, Tensor | None]:
    """Keep a random `1 - dropout` fraction of the sequence positions (structured dropout of context tokens)."""
    b, n = seq.shape[:2]
    keep = max(1, int(n * (1 - dropout)))
    logits = torch.randn(b, n, device=seq.device)
    if mask is not None:
        logits = logits.masked_fill(~mask, -torch.finfo(logits.dtype).max)
    idx = logits.topk(keep, dim=-1).indices
    seq = seq.gather(1, idx[..., None].expand(-1, -1, seq.shape[-1]))
    if mask is not None:
        mask = mask.gather(1, idx)
    return seq, mask
