"""xtf: stamped, migratable x-transformers-compatible checkpoints.

Importing `xtf_core` does not import torch: the model classes and `save`/`load` are loaded on first use,
so header-only tools (`xtf inspect`) stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_LAZY = {
    "TransformerWrapper": "xtf_core.model.wrappers",
    "ContinuousTransformerWrapper": "xtf_core.model.wrappers",
    "XTransformer": "xtf_core.model.wrappers",
    "AttentionLayers": "xtf_core.model.layers",
    "Encoder": "xtf_core.model.layers",
    "Decoder": "xtf_core.model.layers",
    "CrossAttender": "xtf_core.model.layers",
    "AutoregressiveWrapper": "xtf_core.model.autoregressive",
    "ViTransformerWrapper": "xtf_core.model.vit",
    "XLAutoregressiveWrapper": "xtf_core.model.xl_autoregressive",
    "ContinuousAutoregressiveWrapper": "xtf_core.model.continuous_autoregressive",
    "NonAutoregressiveWrapper": "xtf_core.model.nonautoregressive",
    # building blocks, with x-transformers' constructors (xtf_core/model/blocks.py)
    **{
        name: "xtf_core.model.blocks"
        for name in (
            "Attention",
            "FeedForward",
            "LayerNorm",
            "RMSNorm",
            "ScaleNorm",
            "SimpleRMSNorm",
            "TokenEmbedding",
            "AbsolutePositionalEmbedding",
            "RotaryEmbedding",
            "apply_rotary_pos_emb",
            "rotate_half",
            "AlibiPositionalBias",
            "RelativePositionBias",
            "AttentionPool",
            "TransformerBlock",
            "Intermediates",
            "LayerIntermediates",
        )
    },
    "build": "xtf_core.spec",
    "spec_of": "xtf_core.spec",
    "save": "xtf_core.loading",
    "load": "xtf_core.loading",
    "load_state": "xtf_core.loading",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xtf_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
