"""The building blocks code imports from `x_transformers`, with x-transformers 2.31's constructors.

Thin adapters over the core's own modules: same constructor keywords and parameter names, and the call
conventions of x-transformers (e.g. `Attention(...)(x)` returns a tensor, `RotaryEmbedding.forward(t)`).
A keyword the core does not implement raises `UnsupportedOptionError` naming it.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import attention as _attention
from . import feedforward as _feedforward
from . import norms as _norms
from . import positions as _positions
from .attend import AttentionIntermediates
from .layers import AttentionLayers, LayerIntermediates
from .options import _is_neutral, refuse, unsupported
from .wrappers import AttentionPool as _AttentionPool
from .wrappers import refuse_method

Intermediates = AttentionIntermediates

__all__ = [
    "AbsolutePositionalEmbedding",
    "AlibiPositionalBias",
    "Attention",
    "AttentionPool",
    "FeedForward",
    "Intermediates",
    "LayerIntermediates",
    "LayerNorm",
    "RMSNorm",
    "RelativePositionBias",
    "RotaryEmbedding",
    "ScaleNorm",
    "SimpleRMSNorm",
    "TokenEmbedding",
    "TransformerBlock",
    "apply_rotary_pos_emb",
    "rotate_half",
]


def _split(owner: str, target: Any, kwargs: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Keep the keywords `target` takes; refuse the rest unless neutral at their value (`prefix` + name)."""
    accepted = set(inspect.signature(target).parameters) - {"self", "dim"}
    kept = {}
    for key, value in kwargs.items():
        if key in accepted:
            kept[key] = value
        else:
            if not _is_neutral(f"{prefix}{key}", value):
                refuse(owner, key, value, accepted)
    return kept


class Attention(_attention.Attention):
    """`x_transformers.Attention(dim, dim_head=64, heads=8, causal=False, ...)`; calling it returns the output
    (with `return_intermediates=True`, also the intermediates)."""

    def __init__(self, dim: int, **kwargs: Any) -> None:
        super().__init__(dim, **_split("Attention", _attention.Attention.__init__, kwargs, "attn_"))

    def qk_clip_(self, intermediates: Any, tau: float = 100.0) -> None:
        refuse_method("Attention", "qk_clip_")

    def muon_parameters(self) -> Any:
        refuse_method("Attention", "muon_parameters")

    def forward(
        self, x: Tensor, context: Tensor | None = None, *, return_intermediates: bool = False, **kwargs: Any
    ) -> Any:  # type: ignore[override]
        out, inter = super().forward(x, context=context, **kwargs)
        return (out, inter) if return_intermediates else out


class FeedForward(_feedforward.FeedForward):
    """`x_transformers.FeedForward(dim, dim_out=None, mult=4, glu=False, ...)`."""

    def __init__(self, dim: int, **kwargs: Any) -> None:
        super().__init__(dim, **_split("FeedForward", _feedforward.FeedForward.__init__, kwargs, "ff_"))


class LayerNorm(_norms.LayerNorm):
    """Bias-less LayerNorm with gain `gamma`: `LayerNorm(dim, unit_offset=False)`."""

    def __init__(self, dim: int, unit_offset: bool = False) -> None:
        super().__init__(dim, unit_offset=unit_offset)


class RMSNorm(_norms.RMSNorm):
    def __init__(self, dim: int, unit_offset: bool = False) -> None:
        super().__init__(dim, unit_offset=unit_offset)


class ScaleNorm(_norms.ScaleNorm):
    def __init__(self, dim: int, unit_offset: bool = False) -> None:
        super().__init__(dim, unit_offset=unit_offset)


class SimpleRMSNorm(_norms.SimpleRMSNorm):
    def __init__(self, dim: int, **kwargs: Any) -> None:
        super().__init__(dim)


class TokenEmbedding(_positions.TokenEmbedding):
    def __init__(self, dim: int, num_tokens: int, l2norm_embed: bool = False) -> None:
        super().__init__(dim, num_tokens)
        self.l2norm_embed = l2norm_embed

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        return F.normalize(out, dim=-1) if self.l2norm_embed else out


class AbsolutePositionalEmbedding(_positions.AbsolutePositionalEmbedding):
    def __init__(self, dim: int, max_seq_len: int, l2norm_embed: bool = False) -> None:
        super().__init__(dim, max_seq_len)
        self.l2norm_embed = l2norm_embed

    def forward(
        self, x: Tensor, pos: Tensor | None = None, seq_start_pos: Tensor | None = None, offset: int = 0
    ) -> Tensor:
        out = super().forward(x, pos=pos, seq_start_pos=seq_start_pos, offset=offset)
        return F.normalize(out, dim=-1) if self.l2norm_embed else out


class RotaryEmbedding(_positions.RotaryEmbedding):
    """`RotaryEmbedding(dim, use_xpos=False, scale_base=512, interpolation_factor=1., base=10000, base_rescale_factor=1.)`."""

    def forward(self, t: Tensor, offset: int = 0) -> tuple[Tensor, Tensor | float]:  # type: ignore[override]
        return super().forward(t + offset if offset else t)

    def forward_from_seq_len(self, seq_len: int) -> tuple[Tensor, Tensor | float]:
        return self.forward(torch.arange(seq_len, device=self.inv_freq.device))


def rotate_half(x: Tensor) -> Tensor:
    """Rotate interleaved feature pairs: (x1, x2) -> (-x2, x1)."""
    return _positions._rotate_pairs(x)


def apply_rotary_pos_emb(t: Tensor, freqs: Tensor, scale: Tensor | float = 1) -> Tensor:
    """Rotary embedding on the first `freqs.shape[-1]` features of `t` (`[b, n, d]` or `[b, h, n, d]`)."""
    if t.ndim == 3:
        return _positions.apply_rotary(t[:, None], freqs, scale)[:, 0]
    return _positions.apply_rotary(t, freqs, scale)


class AlibiPositionalBias(_positions.AlibiPositionalBias):
    def __init__(
        self, heads: int, total_heads: int | None = None, slopes: list[float] | None = None, **kwargs: Any
    ) -> None:
        if slopes is not None:
            unsupported("AlibiPositionalBias", "slopes", slopes, {"heads", "total_heads"})
        super().__init__(heads, total_heads if total_heads is not None else heads)


class RelativePositionBias(_positions.RelativePositionBias):
    pass


class AttentionPool(_AttentionPool):
    """`AttentionPool(dim, num_pooled_tokens=1, dim_context=None, depth=1, heads=8, dim_head=64, ...)`."""

    def __init__(
        self,
        dim: int,
        num_pooled_tokens: int = 1,
        dim_context: int | None = None,
        add_residual: bool = False,
        depth: int = 1,
        heads: int = 8,
        dim_head: int = 64,
        use_transformer_blocks: bool | None = None,
        squeeze_output: bool | None = None,
        attn_kwargs: dict[str, Any] | None = None,
    ) -> None:
        for key, value, neutral in (
            ("add_residual", add_residual, False),
            ("squeeze_output", squeeze_output, None),
            ("attn_kwargs", attn_kwargs or {}, {}),
            ("use_transformer_blocks", use_transformer_blocks, None),
        ):
            if value != neutral:
                unsupported("AttentionPool", key, value, {"dim", "num_pooled_tokens", "dim_context", "depth"})
        super().__init__(
            dim, dim_context if dim_context is not None else dim, num_pooled_tokens, depth, heads, dim_head
        )


class TransformerBlock(AttentionLayers):
    """One attention + feed-forward block without a final norm: `AttentionLayers(depth=1, pre_norm_has_final_norm=False)`.

    Saved as the `AttentionLayers` it is (the spec names only allowlisted classes)."""

    def __init__(
        self, dim: int, *, depth: int = 1, pre_norm_has_final_norm: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(dim=dim, depth=depth, pre_norm_has_final_norm=pre_norm_has_final_norm, **kwargs)
        self._spec["class"] = "AttentionLayers"
