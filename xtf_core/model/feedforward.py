"""Feed-forward block: Linear -> activation (optionally gated) -> Linear.

State-dict layout as in x-transformers 2.31: `ff.0` is the input projection (`ff.0.0` a plain Linear, or
`ff.0.proj` for a GLU), then an optional post-activation LayerNorm (`ff.1.gamma`), a dropout, the output
projection (`ff.2`, or `ff.3` after the post-activation norm) and an optional sublayer dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .norms import LayerNorm, compiling, global_hooks, has_hooks


def softclamp(t: Tensor, value: float) -> Tensor:
    """Smoothly bound `t` to (-value, value)."""
    return (t / value).tanh() * value


class ReluSquared(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x) ** 2


class SoLU(nn.Module):
    """Softmax linear unit: `LayerNorm(softmax(x) * x)`; the norm's gain is stored as `norm.gamma`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.softmax(dim=-1) * x)


class _Softclamp(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: Tensor) -> Tensor:
        return softclamp(x, self.value)


class _SoftclampedGate(nn.Module):
    """GELU or SiLU whose linear factor is soft-clamped: `softclamp(t) * Phi(t)` or `softclamp(t) * sigmoid(t)`."""

    def __init__(self, gelu: bool, value: float) -> None:
        super().__init__()
        self.gelu, self.value = gelu, value

    def forward(self, t: Tensor) -> Tensor:
        gate = torch.special.ndtr(t) if self.gelu else t.sigmoid()
        return softclamp(t, self.value) * gate


class GLU(nn.Module):
    """Gated linear unit: one projection to `2 * dim_out`, split into value and gate.

    `mult_bias` adds a learned per-feature gain; `softclamp` bounds the value half and uses the
    soft-clamped form of the GELU / SiLU gate.
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        activation: nn.Module,
        mult_bias: bool = False,
        softclamp: bool = False,
        gate_softclamp_value: float = 4.0,
        up_softclamp_value: float = 25.0,
    ) -> None:
        super().__init__()
        if softclamp:
            if not isinstance(activation, (nn.GELU, nn.SiLU)):
                raise ValueError("ff_glu_softclamp needs the GELU or swish activation")
            activation = _SoftclampedGate(isinstance(activation, nn.GELU), gate_softclamp_value)
        self.act = activation
        self.up_softclamp_value = up_softclamp_value if softclamp else None
        self.proj = nn.Linear(dim_in, dim_out * 2)
        self.mult_bias = nn.Parameter(torch.ones(dim_out)) if mult_bias else None

    def forward(self, x: Tensor) -> Tensor:
        up, gate = self.proj(x).chunk(2, dim=-1)
        if self.up_softclamp_value is not None:
            up = softclamp(up, self.up_softclamp_value)
        out = up * self.act(gate)
        return out * self.mult_bias if self.mult_bias is not None else out


class FeedForward(nn.Module):
    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        mult: float = 4,
        glu: bool = False,
        glu_mult_bias: bool = False,
        swish: bool = False,
        relu_squared: bool = False,
        solu: bool = False,
        post_act_ln: bool = False,
        dropout: float = 0.0,
        sublayer_dropout: float = 0.0,
        no_bias: bool = False,
        zero_init_output: bool = False,
        output_proj_depth: int | None = None,
        softclamp_value: float | None = None,
        glu_softclamp: bool = False,
        glu_gate_softclamp_value: float = 4.0,
        glu_up_softclamp_value: float = 25.0,
    ) -> None:
        super().__init__()
        inner = int(dim * mult)
        dim_out = dim_out if dim_out is not None else dim
        if relu_squared and solu:
            raise ValueError("choose at most one of ff_relu_squared and ff_solu")
        if relu_squared:
            activation: nn.Module = ReluSquared()
        elif solu:
            activation = SoLU(inner)
        elif swish:
            activation = nn.SiLU()
        else:
            activation = nn.GELU()
        if glu:
            proj_in: nn.Module = GLU(
                dim,
                inner,
                activation,
                mult_bias=glu_mult_bias,
                softclamp=glu_softclamp,
                gate_softclamp_value=glu_gate_softclamp_value,
                up_softclamp_value=glu_up_softclamp_value,
            )
        else:
            clamp = [_Softclamp(softclamp_value)] if softclamp_value is not None else []
            proj_in = nn.Sequential(nn.Linear(dim, inner, bias=not no_bias), *clamp, activation)
        proj_out = nn.Linear(inner, dim_out, bias=not no_bias)
        stages: list[nn.Module] = [proj_in]
        if post_act_ln:
            stages.append(LayerNorm(inner))
        stages += [nn.Dropout(dropout), proj_out]
        if sublayer_dropout > 0.0:
            stages.append(nn.Dropout(sublayer_dropout))
        self.ff = nn.Sequential(*stages)
        if zero_init_output:
            nn.init.zeros_(proj_out.weight)
            if proj_out.bias is not None:
                nn.init.zeros_(proj_out.bias)
        elif output_proj_depth is not None:
            nn.init.normal_(proj_out.weight, std=(2 * proj_out.in_features * output_proj_depth) ** -0.5)

    def forward(self, x: Tensor, deep_embed: Tensor | None = None) -> Tensor:
        """`deep_embed` (per-token gains of this layer, from the wrapper's `ff_deep_embed`) scales the output."""
        if _gelu_in_place(self.ff[0]):
            # without autograd the GELU overwrites the projection's output: one fresh buffer fewer of the
            # block's widest activation (and the same values: the same kernel, written in place)
            linear, act = self.ff[0]
            out = torch._C._nn.gelu_(linear(x), approximate=act.approximate)
            for stage in self.ff[1:]:
                out = stage(out)
        else:
            out = self.ff(x)
        return out * deep_embed if deep_embed is not None else out


def _gelu_in_place(proj_in: nn.Module) -> bool:
    """Whether `proj_in` is a plain `Linear -> GELU` whose GELU may write into the Linear's output: no
    autograd, no compiler tracing, no hooks on either module."""
    if torch.is_grad_enabled() or not isinstance(proj_in, nn.Sequential) or len(proj_in) != 2:
        return False
    linear, act = proj_in
    if type(act) is not nn.GELU or type(linear) is not nn.Linear or compiling():
        return False
    return not (has_hooks(linear) or has_hooks(act) or has_hooks(proj_in) or global_hooks())
