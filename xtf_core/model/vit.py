"""`ViTransformerWrapper`: an Encoder over image patches, with x-transformers 2.31's parameter names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import SpecError
from .layers import AttentionLayers
from .norms import LayerNorm
from .options import parse_options
from .spec_record import SpecRecorder


@dataclass
class ViTOptions:
    image_size: int
    patch_size: int
    attn_layers: Any
    channels: int = 3
    num_classes: int | None = None
    post_emb_norm: bool = False
    num_register_tokens: int = 0
    emb_dropout: float = 0.0


class ViTransformerWrapper(SpecRecorder, nn.Module):
    """Patches -> LayerNorm, Linear, LayerNorm -> + learned positions -> Encoder -> mean pool -> `mlp_head`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        owner = "ViTransformerWrapper"
        self._record_spec(kwargs)
        o = parse_options(owner, kwargs, ViTOptions)
        if not isinstance(o.attn_layers, AttentionLayers):
            raise SpecError(f"{owner}: 'attn_layers' must be an xtf Encoder")
        if o.image_size % o.patch_size:
            raise SpecError(
                f"{owner}: image_size {o.image_size} is not divisible by patch_size {o.patch_size}"
            )
        dim = o.attn_layers.dim
        num_patches = (o.image_size // o.patch_size) ** 2
        patch_dim = o.channels * o.patch_size**2
        self.image_size, self.patch_size, self.channels = o.image_size, o.patch_size, o.channels
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches, dim))
        self.num_register_tokens = o.num_register_tokens
        if o.num_register_tokens > 0:
            self.register_tokens = nn.Parameter(torch.randn(o.num_register_tokens, dim))
        self.patch_to_embedding = nn.Sequential(
            LayerNorm(patch_dim), nn.Linear(patch_dim, dim), LayerNorm(dim)
        )
        self.post_emb_norm = LayerNorm(dim) if o.post_emb_norm else nn.Identity()
        self.dropout = nn.Dropout(o.emb_dropout)
        self.attn_layers = o.attn_layers
        # without classes the head is the identity: the output is the mean-pooled embedding
        self.mlp_head: nn.Module = (
            nn.Linear(dim, o.num_classes) if o.num_classes is not None else nn.Identity()
        )

    def patches(self, img: Tensor) -> Tensor:
        """`[b, c, H, W]` -> `[b, patches, p * p * c]`, patches in row-major order, channels innermost."""
        b, c, height, width = img.shape
        p = self.patch_size
        x = img.reshape(b, c, height // p, p, width // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (height // p) * (width // p), p * p * c)

    def forward(
        self, img: Tensor, return_embeddings: bool = False, return_logits_and_embeddings: bool = False
    ) -> Any:
        if return_embeddings and return_logits_and_embeddings:
            raise ValueError("pass at most one of return_embeddings and return_logits_and_embeddings")
        b = img.shape[0]
        x = self.patch_to_embedding(self.patches(img))
        x = x + self.pos_embedding[:, : x.shape[1]]
        x = self.dropout(self.post_emb_norm(x))
        n = x.shape[1]
        if self.num_register_tokens > 0:
            x = torch.cat((x, self.register_tokens.expand(b, -1, -1)), dim=1)
        embed = self.attn_layers(x)[:, :n]
        if return_embeddings:
            return embed
        logits = self.mlp_head(embed.mean(dim=-2))
        return (logits, embed) if return_logits_and_embeddings else logits
