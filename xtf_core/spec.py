"""Architecture specs: `build(spec)` makes a model from one, `spec_of(model)` gives a model's spec.

A spec is JSON data mirroring the constructor call, e.g.
`{"class": "TransformerWrapper", "num_tokens": 256, "max_seq_len": 1024,
  "attn_layers": {"class": "Decoder", "dim": 512, "depth": 6, "heads": 8}}`.
`class` is resolved only against the allowlist below; a spec never names arbitrary Python objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from .checkpoint.stamp import canonical_json  # noqa: F401  (the one spelling; kept importable here)
from .errors import SpecError
from .model.autoregressive import AutoregressiveWrapper
from .model.continuous_autoregressive import ContinuousAutoregressiveWrapper
from .model.layers import AttentionLayers, CrossAttender, Decoder, Encoder
from .model.nonautoregressive import NonAutoregressiveWrapper
from .model.spec_record import SpecRecorder
from .model.vit import ViTransformerWrapper
from .model.wrappers import ContinuousTransformerWrapper, TransformerWrapper, XTransformer
from .model.xl_autoregressive import XLAutoregressiveWrapper

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "TransformerWrapper": TransformerWrapper,
    "ContinuousTransformerWrapper": ContinuousTransformerWrapper,
    "XTransformer": XTransformer,
    "ViTransformerWrapper": ViTransformerWrapper,
}
# Training wrappers: their spec nests the wrapped model under "net" (its own spec, built first).
TRAINING_WRAPPERS: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "AutoregressiveWrapper": (AutoregressiveWrapper, ("TransformerWrapper",)),
    "XLAutoregressiveWrapper": (XLAutoregressiveWrapper, ("TransformerWrapper",)),
    "NonAutoregressiveWrapper": (NonAutoregressiveWrapper, ("TransformerWrapper",)),
    "ContinuousAutoregressiveWrapper": (ContinuousAutoregressiveWrapper, ("ContinuousTransformerWrapper",)),
}
LAYER_CLASSES: dict[str, type[nn.Module]] = {
    "Encoder": Encoder,
    "Decoder": Decoder,
    "CrossAttender": CrossAttender,
    "AttentionLayers": AttentionLayers,
}
ALLOWED_CLASSES = {
    **MODEL_CLASSES,
    **LAYER_CLASSES,
    **{name: cls for name, (cls, _) in TRAINING_WRAPPERS.items()},
}


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
            if key == "attn_layers":
                kwargs[key] = _build_node(value, f"{where}.{key}", LAYER_CLASSES)
            elif key == "net" and name in TRAINING_WRAPPERS:
                inner = {n: MODEL_CLASSES[n] for n in TRAINING_WRAPPERS[name][1]}
                kwargs[key] = _build_node(value, f"{where}.{key}", inner)
            else:
                raise SpecError(
                    f"spec at {where}.{key}: only 'attn_layers' (and 'net' of a training wrapper) may hold a nested model"
                )
        else:
            kwargs[key] = value
    if name in TRAINING_WRAPPERS:
        if "net" not in kwargs:
            raise SpecError(f"spec at {where}: a {name} needs its wrapped model under 'net'")
        net = kwargs.pop("net")
        return allowed[name](net, **kwargs)
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
