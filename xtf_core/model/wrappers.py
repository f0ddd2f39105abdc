"""The model wrappers: `TransformerWrapper` (tokens), `ContinuousTransformerWrapper` (vectors), `XTransformer`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SpecError
from .autoregressive import AutoregressiveWrapper
from .layers import AttentionLayers, Decoder, Encoder, LayerIntermediates
from .norms import LayerNorm
from .options import parse_options, unsupported
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
    emb_dim: int | None = None
    max_mem_len: int = 0
    emb_dropout: float = 0.0
    post_emb_norm: bool = False
    num_memory_tokens: int | None = None
    tie_embedding: bool = False
    tie_embedding_scale: float | None = None
    logits_dim: int | None = None
    return_only_embed: bool = False
    use_abs_pos_emb: bool = True
    scaled_sinu_pos_emb: bool = False
    # Legacy behaviours, set only by migrations of old x-transformers checkpoints.
    xtf_logits_bias: bool = False  # to_logits has a bias (x-transformers < 1.27)
    xtf_norm_bias: bool = False  # post_emb_norm is a LayerNorm with bias (< 1.27)


class TransformerWrapper(SpecRecorder, nn.Module):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        owner = "TransformerWrapper"
        self._record_spec(kwargs)
        o = parse_options(owner, kwargs, WrapperOptions)
        layers = _require_layers(owner, o.attn_layers)
        dim = layers.dim
        emb_dim = o.emb_dim if o.emb_dim is not None else dim
        self.num_tokens, self.max_seq_len, self.max_mem_len = o.num_tokens, o.max_seq_len, o.max_mem_len
        self.token_emb = TokenEmbedding(emb_dim, o.num_tokens)
        self.pos_emb = _positions(o.use_abs_pos_emb, o.scaled_sinu_pos_emb, emb_dim, o.max_seq_len, layers)
        self.post_emb_norm = LayerNorm(emb_dim, bias=o.xtf_norm_bias) if o.post_emb_norm else nn.Identity()
        self.emb_dropout = nn.Dropout(o.emb_dropout)
        self.project_emb = nn.Linear(emb_dim, dim) if emb_dim != dim else nn.Identity()
        self.attn_layers = layers
        self.tie_embedding = o.tie_embedding
        self.tie_embedding_scale = o.tie_embedding_scale if o.tie_embedding_scale is not None else dim**-0.5
        if o.tie_embedding and emb_dim != dim:
            raise SpecError(f"{owner}: tie_embedding needs emb_dim == dim ({emb_dim} != {dim})")
        if o.return_only_embed or o.tie_embedding:
            self.to_logits: nn.Module | None = None
        else:
            logits_dim = o.logits_dim if o.logits_dim is not None else o.num_tokens
            self.to_logits = nn.Linear(dim, logits_dim, bias=o.xtf_logits_bias)
        self.num_memory_tokens = o.num_memory_tokens or 0
        if self.num_memory_tokens > 0:
            self.memory_tokens = nn.Parameter(torch.randn(self.num_memory_tokens, dim))
        self.can_cache_kv = self.num_memory_tokens == 0 and layers.can_cache_kv
        self.can_cache_kv_outside_max_seq_len = isinstance(self.pos_emb, _ZeroPositions)

    def _logits(self, x: Tensor) -> Tensor:
        if self.tie_embedding:
            return (x @ self.token_emb.emb.weight.t()) * self.tie_embedding_scale
        assert self.to_logits is not None
        return self.to_logits(x)

    def forward(
        self,
        x: Tensor,
        return_embeddings: bool = False,
        return_logits_and_embeddings: bool = False,
        return_intermediates: bool = False,
        return_mems: bool = False,
        return_attn: bool = False,
        mask: Tensor | None = None,
        mems: list[Tensor] | tuple[Tensor, ...] | None = None,
        mem_masks: list[Tensor] | None = None,
        detach_mems: bool = True,
        pos: Tensor | None = None,
        prepend_embeds: Tensor | None = None,
        prepend_mask: Tensor | None = None,
        sum_embeds: Tensor | None = None,
        seq_start_pos: Tensor | None = None,
        cache: LayerIntermediates | None = None,
        input_not_include_cache: bool = False,
        **kwargs: Any,
    ) -> Any:
        b, n = x.shape[0], x.shape[1]
        has_logits_head = self.tie_embedding or self.to_logits is not None
        return_embeddings = return_embeddings or not has_logits_head
        seq_pos_offset = cache.cache_length if cache is not None and input_not_include_cache else 0
        external_pos = pos is not None and pos.dtype != torch.long
        pos_emb = (
            pos
            if external_pos
            else self.pos_emb(x, pos=pos, seq_start_pos=seq_start_pos, offset=seq_pos_offset)
        )
        x = self.token_emb(x) + pos_emb
        if sum_embeds is not None:
            x = x + sum_embeds
        x = self.post_emb_norm(x)
        if prepend_embeds is not None:
            x, mask = _prepend(x, mask, prepend_embeds, prepend_mask, n)
        x = self.emb_dropout(x)
        x = self.project_emb(x)

        mem_seq = x.shape[-2]
        if self.num_memory_tokens > 0:
            x = torch.cat((self.memory_tokens.expand(b, -1, -1), x), dim=-2)
            if mask is not None:
                mask = F.pad(mask, (self.num_memory_tokens, 0), value=True)

        x, intermediates = self.attn_layers(
            x,
            mask=mask,
            mems=mems,
            mem_masks=mem_masks,
            cache=cache,
            return_hiddens=True,
            return_attn=return_attn,
            pos=pos if not external_pos else None,
            seq_pos_offset=seq_pos_offset,
            seq_start_pos=seq_start_pos,
            input_not_include_cache=input_not_include_cache,
            **kwargs,
        )
        if self.num_memory_tokens > 0:
            intermediates.memory_tokens, x = x[:, : self.num_memory_tokens], x[:, self.num_memory_tokens :]
            x = x[:, :mem_seq]

        logits = None if return_embeddings and not return_logits_and_embeddings else self._logits(x)
        if return_logits_and_embeddings:
            out: Any = (logits, x)
        elif return_embeddings:
            out = x
        else:
            out = logits

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
        project_out = o.dim_out is not None and (not o.use_identity_if_same_dim or o.dim_out != dim)
        self.project_in = nn.Linear(o.dim_in, dim, bias=o.xtf_project_bias) if project_in else nn.Identity()
        self.project_out = (
            nn.Linear(dim, o.dim_out, bias=o.xtf_project_bias) if project_out else nn.Identity()
        )
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
