"""Normalisation layers, with x-transformers' parameter names (`gamma` for LayerNorm, `g` for RMS/Scale norms)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm(nn.Module):
    """Bias-less LayerNorm; with `unit_offset` the stored gain is `scale - 1`.

    `bias=True` (legacy checkpoints, x-transformers < 1.27) adds the learned shift `beta`.
    """

    def __init__(self, dim: int, unit_offset: bool = False, bias: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.unit_offset = unit_offset
        self.gamma = nn.Parameter(torch.full((dim,), 1.0 - float(unit_offset)))
        self.beta = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        normed = F.layer_norm(x, (self.dim,))
        out = normed * (self.gamma + float(self.unit_offset))
        return out + self.beta if self.beta is not None else out


class RMSNorm(nn.Module):
    """RMSNorm as `normalize(x) * sqrt(dim) * g`."""

    def __init__(self, dim: int, unit_offset: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.unit_offset = unit_offset
        self.g = nn.Parameter(torch.full((dim,), 1.0 - float(unit_offset)))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * self.scale * (self.g + float(self.unit_offset))


class ScaleNorm(nn.Module):
    """ScaleNorm: one learned scalar gain."""

    def __init__(self, dim: int, unit_offset: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.unit_offset = unit_offset
        self.g = nn.Parameter(torch.full((1,), 1.0 - float(unit_offset)))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * self.scale * (self.g + float(self.unit_offset))


class SimpleRMSNorm(nn.Module):
    """RMSNorm without a learned gain."""

    def __init__(self, dim: int, unit_offset: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * self.scale


def norm_class(*, use_rmsnorm: bool, use_scalenorm: bool, use_simple_rmsnorm: bool) -> type[nn.Module]:
    """The norm an AttentionLayers builds for its flags (LayerNorm when none is set)."""
    if use_scalenorm:
        return ScaleNorm
    if use_rmsnorm:
        return RMSNorm
    if use_simple_rmsnorm:
        return SimpleRMSNorm
    return LayerNorm
