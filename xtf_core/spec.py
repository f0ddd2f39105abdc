"""Architecture specs: `build(spec)` makes a model from one, `spec_of(model)` gives a model's spec.

A spec is JSON data mirroring the constructor call, e.g.
`{"class": "TransformerWrapper", "num_tokens": 256, "max_seq_len": 1024,
  "attn_layers": {"class": "Decoder", "dim": 512, "depth": 6, "heads": 8}}`.
`class` is resolved only against the allowlist below; a spec never names arbitrary Python objects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from torch import nn

from .errors import SpecError
from .model.layers import AttentionLayers, CrossAttender, Decoder, Encoder
from .model.spec_record import SpecRecorder
from .model.wrappers import ContinuousTransformerWrapper, TransformerWrapper, XTransformer

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "TransformerWrapper": TransformerWrapper,
    "ContinuousTransformerWrapper": ContinuousTransformerWrapper,
    "XTransformer": XTransformer,
}
LAYER_CLASSES: dict[str, type[nn.Module]] = {
    "Encoder": Encoder,
    "Decoder": Decoder,
    "CrossAttender": CrossAttender,
    "AttentionLayers": AttentionLayers,
}
ALLOWED_CLASSES = {**MODEL_CLASSES, **LAYER_CLASSES}


def _build_node(spec: Any, where: str, allowed: Mapping[str, type[nn.Module]]) -> nn.Module:
    if not isinstance(spec, Mapping):
        raise SpecError(f"spec at {where} must be an object with a 'class' key, got {type(spec).__name__}")
    name = spec.get("class")
    if not isinstance(name, str):
        raise SpecError(f"spec at {where} has no string 'class'")
    if name not in allowed:
        raise SpecError(
            f"spec at {where} names unknown class {name!r}; allowed here: {', '.join(sorted(allowed))}"
        )
    kwargs: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "class":
            continue
        if isinstance(value, Mapping) and "class" in value:
            if key != "attn_layers":
                raise SpecError(f"spec at {where}.{key}: only 'attn_layers' may hold a nested model")
            kwargs[key] = _build_node(value, f"{where}.{key}", LAYER_CLASSES)
        else:
            kwargs[key] = value
    return allowed[name](**kwargs)


def build(spec: Mapping[str, Any]) -> nn.Module:
    """Construct the model a spec describes (top level: a wrapper or an attention stack)."""
    return _build_node(spec, "spec", ALLOWED_CLASSES)


def spec_of(model: nn.Module) -> dict[str, Any]:
    """The spec of a model built by the xtf core (its constructor call as JSON data)."""
    if not isinstance(model, SpecRecorder):
        raise SpecError(
            f"{type(model).__name__} was not built by the xtf core; build it with xtf_core classes or xtf_core.build"
        )
    return model.spec()


def canonical_json(spec: Mapping[str, Any]) -> str:
    """The one text form of a spec stored in checkpoints (sorted keys, no spaces)."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)
