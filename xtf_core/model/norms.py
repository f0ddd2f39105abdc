"""Normalisation layers, with x-transformers' parameter names (`gamma` for LayerNorm, `g` for RMS/Scale norms)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module_mod

# ---- guards of the fast paths (attention, feed-forward, the stack), kept here, the lowest model module


def compiling() -> bool:
    """Whether torch.compile is tracing (fast paths that write in place or into `out=` step aside)."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False


def has_hooks(module: nn.Module) -> bool:
    """Whether `module` has forward hooks (a fast path that skips its forward would skip them)."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def global_hooks() -> bool:
    """Whether forward hooks registered for every module are set."""
    return bool(
        getattr(_module_mod, "_global_forward_hooks", None)
        or getattr(_module_mod, "_global_forward_pre_hooks", None)
    )


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
        # the gain (and shift) go into the one layer_norm kernel: no second pass over the activations
        gain = self.gamma + 1.0 if self.unit_offset else self.gamma
        return F.layer_norm(x, (self.dim,), gain, self.beta)


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


class AdaptiveLayerNorm(nn.Module):
    """LayerNorm whose gain comes from a condition: `ln(x) * (to_gamma(condition) + 1)`."""

    def __init__(self, dim: int, dim_condition: int | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.to_gamma = nn.Linear(dim_condition if dim_condition is not None else dim, dim, bias=False)
        nn.init.zeros_(self.to_gamma.weight)

    def forward(self, x: Tensor, *, condition: Tensor) -> Tensor:
        if condition.ndim == 2:
            condition = condition[:, None]
        return F.layer_norm(x, (self.dim,)) * (self.to_gamma(condition) + 1.0)


class AdaptiveRMSNorm(nn.Module):
    """RMSNorm whose gain comes from a condition."""

    def __init__(self, dim: int, dim_condition: int | None = None) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.to_gamma = nn.Linear(dim_condition if dim_condition is not None else dim, dim, bias=False)
        nn.init.zeros_(self.to_gamma.weight)

    def forward(self, x: Tensor, *, condition: Tensor) -> Tensor:
        if condition.ndim == 2:
            condition = condition[:, None]
        return F.normalize(x, dim=-1) * self.scale * (self.to_gamma(condition) + 1.0)


class DynamicTanh(nn.Module):
    """Dynamic tanh in place of a norm: `tanh(alpha * x) * gamma + beta` (alpha a learned scalar).

    With `unit_offset` the stored `pre_tanh_scale` is `alpha - init_alpha` and the stored gain `gamma - 1`.
    """

    def __init__(self, dim: int, init_alpha: float = 1.0, unit_offset: bool = False) -> None:
        super().__init__()
        self.pre_tanh_scale_offset = init_alpha if unit_offset else 0.0
        self.gamma_offset = float(unit_offset)
        self.pre_tanh_scale = nn.Parameter(torch.tensor(0.0 if unit_offset else float(init_alpha)))
        self.gamma = nn.Parameter(torch.full((dim,), 1.0 - float(unit_offset)))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        alpha = self.pre_tanh_scale + self.pre_tanh_scale_offset
        return (x * alpha).tanh() * (self.gamma + self.gamma_offset) + self.beta


class Derf(nn.Module):
    """Error-function norm replacement: `erf(alpha * x + s) * gamma + beta`; with `unit_offset` alpha and
    gamma are stored minus one."""

    def __init__(
        self, dim: int, init_alpha: float = 0.5, init_bias: float = 0.0, unit_offset: bool = False
    ) -> None:
        super().__init__()
        self.scale_offset = 1.0 if unit_offset else 0.0
        self.alpha = nn.Parameter(torch.tensor(float(init_alpha) - self.scale_offset))
        self.s = nn.Parameter(torch.tensor(float(init_bias)))
        self.gamma = nn.Parameter(torch.full((dim,), 1.0 - self.scale_offset))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x * (self.alpha + self.scale_offset) + self.s
        return torch.erf(x) * (self.gamma + self.scale_offset) + self.beta
