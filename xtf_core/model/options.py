"""Which constructor options the core implements, and the one place that rejects the rest.

x-transformers routes kwargs by prefix (`attn_`, `ff_`, `cross_attn_`); so do we. An option outside these
sets raises `UnsupportedOptionError` naming it, unless it is a known x-transformers option passed at its
default value (which builds the same model, so old configs that spell out defaults keep working).
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, TypeVar

from ..errors import SpecError, UnsupportedOptionError

ATTN_OPTIONS = frozenset(
    {
        "dim_head",
        "kv_heads",
        "one_kv_head",
        "qk_norm",
        "qk_norm_groups",
        "qk_norm_scale",
        "qk_norm_dim_scale",
        "gate_values",
        "flash",
        "dropout",
        "dim_context",
    }
)
FF_OPTIONS = frozenset({"mult", "glu", "swish", "relu_squared", "no_bias", "dropout"})

# x-transformers options we do not implement, with the value at which they change nothing.
NEUTRAL_DEFAULTS: dict[str, Any] = {
    "macaron": False,
    "shift_tokens": 0,
    "use_layerscale": False,
    "gate_residual": False,
    "scale_residual": False,
    "scale_residual_constant": 1.0,
    "zero_init_branch_output": False,
    "layer_dropout": 0.0,
    "cross_attn_tokens_dropout": 0.0,
    "weight_tie_layers": False,
    "dynamic_pos_bias": False,
    "unet_skips": False,
    "num_residual_streams": 1,
    "add_value_residual": False,
    "softclamp_output": False,
    "use_adaptive_layernorm": False,
    "use_adaptive_rmsnorm": False,
    "use_dynamic_tanh": False,
    "pre_and_post_norm": False,
    "attn_num_mem_kv": 0,
    "attn_talking_heads": False,
    "attn_on_attn": False,
    "attn_sparse_topk": None,
    "attn_head_scale": False,
    "attn_gate_value_heads": False,
    "attn_zero_init_output": False,
    "ff_post_act_ln": False,
    "ff_zero_init_output": False,
    "ff_glu_mult_bias": False,
}


def unsupported(owner: str, option: str, value: Any, supported: set[str] | frozenset[str]) -> None:
    """Raise for `option` unless it is neutral at `value`."""
    if option in NEUTRAL_DEFAULTS and NEUTRAL_DEFAULTS[option] == value:
        return
    raise UnsupportedOptionError(
        f"{owner}: option '{option}'={value!r} is not supported by the xtf core; "
        f"remove it or use one of: {', '.join(sorted(supported))}"
    )


def split_prefixed(
    owner: str, kwargs: dict[str, Any], layer_options: frozenset[str]
) -> tuple[dict, dict, dict]:
    """Split AttentionLayers kwargs into (attn, cross_attn, ff) groups, rejecting anything unknown."""
    attn: dict[str, Any] = {}
    cross: dict[str, Any] = {}
    ff: dict[str, Any] = {}
    supported = (
        set(layer_options)
        | {f"attn_{k}" for k in ATTN_OPTIONS}
        | {f"cross_attn_{k}" for k in ATTN_OPTIONS}
        | {f"ff_{k}" for k in FF_OPTIONS}
    )
    for key, value in kwargs.items():
        if key.startswith("cross_attn_") and key[len("cross_attn_") :] in ATTN_OPTIONS:
            cross[key[len("cross_attn_") :]] = value
        elif key.startswith("attn_") and key[len("attn_") :] in ATTN_OPTIONS - {"dim_context"}:
            attn[key[len("attn_") :]] = value
        elif key.startswith("ff_") and key[len("ff_") :] in FF_OPTIONS:
            ff[key[len("ff_") :]] = value
        else:
            unsupported(owner, key, value, supported)
            continue
        if isinstance(value, (list, tuple)):
            raise UnsupportedOptionError(
                f"{owner}: per-layer values for '{key}' are not supported; pass one value"
            )
    return attn, cross, ff


OptionsT = TypeVar("OptionsT")


def parse_options(owner: str, kwargs: dict[str, Any], options_cls: type[OptionsT]) -> OptionsT:
    """Fill an options dataclass from kwargs; an unknown kwarg is rejected (or dropped if neutral)."""
    names = {f.name for f in fields(options_cls)}  # type: ignore[arg-type]
    for key, value in kwargs.items():
        if key not in names:
            unsupported(owner, key, value, names)
    missing = [
        f.name
        for f in fields(options_cls)  # type: ignore[arg-type]
        if f.name not in kwargs and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        raise SpecError(f"{owner}: missing required option '{missing[0]}'")
    return options_cls(**{k: v for k, v in kwargs.items() if k in names})
