"""Feed-forward block: Linear -> activation (optionally gated) -> Linear, stored as `ff.0`, `ff.2`."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ReluSquared(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x) ** 2


class GLU(nn.Module):
    """Gated linear unit: one projection to `2 * dim_out`, split into value and gate."""

    def __init__(self, dim_in: int, dim_out: int, activation: nn.Module) -> None:
        super().__init__()
        self.act = activation
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        up, gate = self.proj(x).chunk(2, dim=-1)
        return up * self.act(gate)


class FeedForward(nn.Module):
    def __init__(
        self,
        dim: int,
        mult: float = 4,
        glu: bool = False,
        swish: bool = False,
        relu_squared: bool = False,
        no_bias: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner = int(dim * mult)
        if relu_squared:
            activation: nn.Module = ReluSquared()
        elif swish:
            activation = nn.SiLU()
        else:
            activation = nn.GELU()
        if glu:
            proj_in: nn.Module = GLU(dim, inner, activation)
        else:
            proj_in = nn.Sequential(nn.Linear(dim, inner, bias=not no_bias), activation)
        self.ff = nn.Sequential(proj_in, nn.Dropout(dropout), nn.Linear(inner, dim, bias=not no_bias))

    def forward(self, x: Tensor) -> Tensor:
        return self.ff(x)
