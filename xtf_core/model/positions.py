"""Token and position embeddings: absolute, rotary (with xPos), ALiBi and T5 relative position bias."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .norms import LayerNorm, compiling


class TokenEmbedding(nn.Module):
    def __init__(self, dim: int, num_tokens: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(num_tokens, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.emb(x.long())


class AbsolutePositionalEmbedding(nn.Module):
    """Learned absolute positions, scaled by `dim ** -0.5`."""

    def __init__(self, dim: int, max_seq_len: int) -> None:
        super().__init__()
        self.scale = dim**-0.5
        self.max_seq_len = max_seq_len
        self.emb = nn.Embedding(max_seq_len, dim)

    def forward(
        self, x: Tensor, pos: Tensor | None = None, seq_start_pos: Tensor | None = None, offset: int = 0
    ) -> Tensor:
        seq_len = x.shape[1]
        if seq_len > self.max_seq_len:
            raise ValueError(
                f"sequence length {seq_len} exceeds the absolute positional embedding's max_seq_len {self.max_seq_len}"
            )
        if pos is None:
            pos = torch.arange(seq_len, device=x.device) + offset
        if seq_start_pos is not None:
            pos = (pos - seq_start_pos[..., None]).clamp(min=0)
        return self.emb(pos) * self.scale


class ScaledSinusoidalEmbedding(nn.Module):
    """Fixed sinusoidal positions with one learned scale."""

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"scaled sinusoidal embedding needs an even dim, got {dim}")
        self.dim = dim
        self.theta = theta
        self.scale = nn.Parameter(torch.ones(1) * dim**-0.5)

    def forward(
        self, x: Tensor, pos: Tensor | None = None, seq_start_pos: Tensor | None = None, offset: int = 0
    ) -> Tensor:
        half = self.dim // 2
        inv_freq = self.theta ** -(torch.arange(half, device=x.device).float() / half)
        if pos is None:
            pos = torch.arange(x.shape[1], device=x.device) + offset
        if seq_start_pos is not None:
            pos = pos - seq_start_pos[..., None]
        emb = pos.float()[..., None] * inv_freq
        return torch.cat((emb.sin(), emb.cos()), dim=-1) * self.scale


class RotaryEmbedding(nn.Module):
    """Rotary frequencies (interleaved pairs) with optional xPos scaling; `inv_freq`/`scale` are persistent."""

    def __init__(
        self,
        dim: int,
        use_xpos: bool = False,
        scale_base: float = 512,
        interpolation_factor: float = 1.0,
        base: float = 10000.0,
        base_rescale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        base *= base_rescale_factor ** (dim / (dim - 2))
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)))
        if interpolation_factor < 1.0:
            raise ValueError(f"rotary_interpolation_factor must be >= 1, got {interpolation_factor}")
        self.interpolation_factor = interpolation_factor
        self.use_xpos = use_xpos
        self.scale_base = scale_base
        if use_xpos:
            self.register_buffer("scale", (torch.arange(0, dim, 2) + 0.4 * dim) / (1.4 * dim))
        else:
            self.scale = None

    def forward(self, pos: Tensor) -> tuple[Tensor, Tensor | float]:
        """Frequencies `[b or 1, n, dim]` (and xPos scale) for positions of shape `[n]`, `[1, n]` or `[b, n]`."""
        if pos.ndim == 1:
            pos = pos[None]
        if pos.ndim != 2:
            raise ValueError(
                f"rotary positions must have shape [n], [1, n] or [b, n], got {tuple(pos.shape)}"
            )
        with torch.autocast(device_type=pos.device.type, enabled=False):
            inv_freq = self.inv_freq.float()
            freqs = pos.to(inv_freq.dtype)[..., None] * inv_freq / self.interpolation_factor
            freqs = torch.stack((freqs, freqs), dim=-1).flatten(-2)
            if self.scale is None:
                return freqs, 1.0
            max_pos = pos.max() + 1
            power = (pos - torch.div(max_pos, 2, rounding_mode="floor")) / self.scale_base
            scale = self.scale.float() ** power[..., None]
            scale = torch.stack((scale, scale), dim=-1).flatten(-2)
            return freqs, scale


def _rotate_pairs(x: Tensor) -> Tensor:
    x = x.unflatten(-1, (-1, 2))
    x1, x2 = x.unbind(dim=-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def _complex_rotation_applies(t: Tensor, freqs: Tensor) -> bool:
    """Whether the rotation may run as one complex multiplication (see `_rotate_complex`): eager on the CPU,
    float32/float64 features and frequencies of one dtype, a layout that pairs view as complex numbers,
    and frequencies that come in equal pairs (as `RotaryEmbedding` makes them)."""
    if compiling() or t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
        return False
    if freqs.dtype != t.dtype or freqs.shape[-1] % 2 or t.stride(-1) != 1 or t.storage_offset() % 2:
        return False
    if any(stride % 2 for stride in t.stride()[:-1]):
        return False
    return torch.equal(freqs[..., 0::2], freqs[..., 1::2])


def _output_with_rest(t: Tensor, rest: Tensor) -> Tensor:
    """A fresh output for rotating `t` without autograd, its pass-through features `rest` already in place.
    On the CPU it is laid out as `t` is where `t` is dense (a [b, n, h, d] layout stays one, so attention's
    output needs no copy to become [b, n, h * d]); elsewhere it is contiguous."""
    out = (
        torch.empty_like(t)
        if t.device.type == "cpu"
        else torch.empty(t.shape, dtype=t.dtype, device=t.device)
    )
    out[..., t.shape[-1] - rest.shape[-1] :] = rest
    return out


def _rotate_complex(t: Tensor, rotated: Tensor, rest: Tensor, freqs: Tensor) -> Tensor:
    """The rotation of each pair `(x1, x2)` by angle `f`, `(x1 cos f - x2 sin f, x2 cos f + x1 sin f)`, is
    the complex product `(x1 + i x2)(cos f + i sin f)`: one multiplication (and one in the backward pass)
    instead of a multiply, a negation, a stack and a multiply-add. Products are rounded as in the real
    formula; a sum may differ from it in the last bit."""
    half = freqs[..., 0::2]
    turn = torch.complex(half.cos(), half.sin())
    pairs = torch.view_as_complex(rotated.unflatten(-1, (-1, 2)))
    if not rest.shape[-1]:
        return torch.view_as_real(pairs * turn).flatten(-2)
    if not (torch.is_grad_enabled() and t.requires_grad):
        # no autograd: the product is written straight into the output
        out = _output_with_rest(t, rest)
        rot_dim = rotated.shape[-1]
        torch.mul(pairs, turn, out=torch.view_as_complex(out[..., :rot_dim].unflatten(-1, (-1, 2))))
        return out
    return torch.cat((torch.view_as_real(pairs * turn).flatten(-2), rest), dim=-1)


def _rotate_leading(t: Tensor, freqs: Tensor, scale: Tensor | float) -> Tensor:
    """Rotate the first `freqs.shape[-1]` features of `t` by `freqs` (already broadcastable to `t`'s
    leading dims); the other features pass through unchanged."""
    rot_dim, dtype = freqs.shape[-1], t.dtype
    with torch.autocast(device_type=t.device.type, enabled=False):
        # The float32 frequencies promote the products (as in x-transformers): a half-precision `t` is
        # rotated in float32 without a float32 copy of it, and only the rotated features are cast back.
        # one split, not two slices: its gradient is one concatenation, not two zero-filled buffers summed
        rotated, rest = t.split((rot_dim, t.shape[-1] - rot_dim), dim=-1)
        unit_scale = not torch.is_tensor(scale) and scale == 1.0
        if unit_scale and _complex_rotation_applies(t, freqs):
            return _rotate_complex(t, rotated, rest, freqs)
        cos, sin = freqs.cos(), freqs.sin()
        if not unit_scale:
            rotated = rotated * cos * scale + _rotate_pairs(rotated) * sin * scale
            rotated = rotated.to(dtype)
            return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated
        # multiplying by a scale of 1.0 changes nothing: those two passes are skipped
        if rest.shape[-1] and not (torch.is_grad_enabled() and t.requires_grad) and not compiling():
            # no autograd (and eager: a compiler fuses this itself): the rotated features are written, in
            # t's dtype, straight into one output
            out = _output_with_rest(t, rest)
            torch.addcmul(rotated * cos, _rotate_pairs(rotated), sin, out=out[..., :rot_dim])
            return out
        rotated = torch.addcmul(rotated * cos, _rotate_pairs(rotated), sin).to(dtype)
        return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated


def apply_rotary(t: Tensor, freqs: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """Rotate the first `freqs.shape[-1]` features of `t` `[b, h, n, d]` by the last `n` positions of `freqs`."""
    seq_len = t.shape[-2]
    freqs = freqs[:, -seq_len:, :][:, None]
    if torch.is_tensor(scale):
        scale = scale[:, -seq_len:, :][:, None]
    return _rotate_leading(t, freqs, scale)


def apply_rotary_to_qk(qk: Tensor, freqs: Tensor) -> Tensor:
    """Queries and keys stacked as `[b, n, 2, h, d]` (one projection's output, sequence on dim 1), both
    rotated by the last `n` positions of `freqs` `[b or 1, n', rot]` in one pass (no xPos scale)."""
    freqs = freqs[:, -qk.shape[1] :, :][:, :, None, None]
    return _rotate_leading(qk, freqs, 1.0)


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi head slopes (geometric; interleaved completion for a non-power-of-two head count)."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_two(heads)
    closest = 2 ** math.floor(math.log2(heads))
    return power_of_two(closest) + power_of_two(2 * closest)[0::2][: heads - closest]


class AlibiPositionalBias(nn.Module):
    """ALiBi on the first `heads` of `total_heads` heads (the rest get zero bias). No stored tensors."""

    def __init__(self, heads: int, total_heads: int, slopes: list[float] | None = None) -> None:
        super().__init__()
        # explicit slopes set the biased head count themselves, as in x-transformers
        self.slopes = [float(v) for v in slopes] if slopes is not None else alibi_slopes(heads)
        if len(self.slopes) > total_heads:
            raise ValueError(f"{len(self.slopes)} ALiBi slopes for {total_heads} heads")
        self.heads = len(self.slopes)
        self.total_heads = total_heads

    def _slopes(self, device: torch.device) -> Tensor:
        return torch.tensor(self.slopes, device=device)[:, None, None]

    def _finish(self, distance: Tensor) -> Tensor:
        bias = -distance.abs() * self._slopes(distance.device)
        return F.pad(bias, (0, 0, 0, 0, 0, self.total_heads - bias.shape[-3]))

    def forward(self, i: int, j: int, device: torch.device) -> Tensor:
        """Bias `[total_heads, i, j]` for the last `i` queries against `j` keys."""
        q_pos = torch.arange(j - i, j, device=device)
        k_pos = torch.arange(j, device=device)
        return self._finish((k_pos[None, :] - q_pos[:, None]).float()[None])

    def forward_custom_pos(self, pos: Tensor) -> Tensor:
        """Bias for explicit positions `[n]` -> `[h, n, n]`, `[b, n]` -> `[b, h, n, n]`, or per head
        `[b, h, n]` -> `[b, h, n, n]` (each head its own positions)."""
        distance = (pos[..., None, :] - pos[..., :, None]).float()
        if distance.ndim == 3:
            distance = distance[:, None]
        elif distance.ndim == 2:
            distance = distance[None]
        return self._finish(distance)


class RelativePositionBias(nn.Module):
    """T5 bucketed relative position bias, one learned scalar per bucket and head."""

    def __init__(
        self,
        scale: float,
        causal: bool = False,
        num_buckets: int = 32,
        max_distance: int = 128,
        heads: int = 8,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.causal = causal
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def _bucket(self, relative_position: Tensor) -> Tensor:
        num_buckets, ret, n = self.num_buckets, 0, -relative_position
        if not self.causal:
            num_buckets //= 2
            ret += (n < 0).long() * num_buckets
            n = n.abs()
        else:
            n = n.clamp(min=0)
        max_exact = num_buckets // 2
        is_small = n < max_exact
        large = (
            max_exact
            + (
                torch.log(n.float() / max_exact)
                / math.log(self.max_distance / max_exact)
                * (num_buckets - max_exact)
            ).long()
        )
        large = large.clamp(max=num_buckets - 1)
        return ret + torch.where(is_small, n, large)

    def forward(self, i: int, j: int, device: torch.device) -> Tensor:
        q_pos = torch.arange(j - i, j, dtype=torch.long, device=device)
        k_pos = torch.arange(j, dtype=torch.long, device=device)
        buckets = self._bucket(k_pos[None, :] - q_pos[:, None])
        return self.relative_attention_bias(buckets).permute(2, 0, 1) * self.scale


class DynamicPositionBias(nn.Module):
    """Attention bias from a small MLP over relative distances (one output per head).

    `mlp.0` maps a distance to `dim` features (with an xtf LayerNorm `gamma` when `norm`), each further
    hidden layer is Linear (+ torch LayerNorm) + SiLU, and the last Linear gives one bias per head.
    """

    def __init__(
        self, dim: int, *, heads: int, depth: int, log_distance: bool = False, norm: bool = False
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"dynamic_pos_bias_mlp_depth must be at least 1, got {depth}")
        self.log_distance = log_distance
        first: list[nn.Module] = [nn.Linear(1, dim)]
        if norm:
            first.append(LayerNorm(dim))
        self.mlp = nn.ModuleList([nn.Sequential(*first, nn.SiLU())])
        for _ in range(depth - 1):
            hidden: list[nn.Module] = [nn.Linear(dim, dim)]
            if norm:
                hidden.append(nn.LayerNorm(dim))
            self.mlp.append(nn.Sequential(*hidden, nn.SiLU()))
        self.mlp.append(nn.Linear(dim, heads))

    def forward(self, i: int, j: int, device: torch.device | None = None) -> Tensor:
        """Bias `[heads, i, j]` for the last `i` queries against `j` keys."""
        device = device if device is not None else self.mlp[-1].weight.device
        q_pos = torch.arange(j - i, j, device=device)
        k_pos = torch.arange(j, device=device)
        index = q_pos[:, None] - k_pos[None, :] + (j - 1)  # distances in [-(j-1), j-1], shifted to >= 0
        dist = torch.arange(-j + 1, j, device=device).float()[:, None]
        if self.log_distance:
            dist = torch.sign(dist) * torch.log(dist.abs() + 1)
        for layer in self.mlp:
            dist = layer(dist)
        return dist[index].permute(2, 0, 1)


class PolarEmbedding(nn.Module):
    """PoPE frequencies over the whole head dimension, with a learned per-head key phase bias in [-2 pi, 0].

    `inv_freq` is a persistent buffer and `learned_bias` `[heads, 1, dim]` a parameter, as in x-transformers.
    """

    def __init__(self, dim: int, heads: int, bias_uniform_init: bool = False, base: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim).float() / dim)))
        self.learned_bias = nn.Parameter(torch.zeros(heads, 1, dim))
        if bias_uniform_init:
            with torch.no_grad():
                self.learned_bias.uniform_(-2.0 * math.pi, 0.0)

    def forward(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """(frequencies `[b or 1, n, dim]`, key bias `[heads, 1, dim]`) for positions `[n]` or `[b, n]`."""
        if pos.ndim == 1:
            pos = pos[None]
        with torch.autocast(device_type=pos.device.type, enabled=False):
            freqs = pos.to(self.inv_freq.dtype)[..., None] * self.inv_freq
            return freqs, self.learned_bias.clamp(-2.0 * math.pi, 0.0)
