"""Which constructor options the core implements, and the one place that rejects the rest.

x-transformers routes kwargs by prefix (`attn_`, `ff_`, `cross_attn_`); so do we. An option outside these
sets raises `UnsupportedOptionError` naming it, unless it is a known x-transformers option passed at its
default value (which builds the same model, so old configs that spell out defaults keep working).
"""

from __future__ import annotations

import difflib
from dataclasses import MISSING, fields
from typing import Any, NoReturn, TypeVar

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
        "num_mem_kv",
        "on_attn",
        "pre_talking_heads",
        "post_talking_heads",
        "pre_scale_post_talking_heads",
        "value_rmsnorm",
        "head_scale",
        "sparse_topk",
        "sparse_topk_straight_through",
        "max_attend_past",
        "swiglu_values",
        "gate_value_heads",
        "softclamp_logits",
        "logit_softclamp_value",
        "zero_init_output",
        "sublayer_dropout",
        "onnxable",
        "qk_rmsnorm",
        "k_rmsnorm",
        "gate_values_rank",
        "gate_values_headwise",
        "output_gate",
        "output_gate_rank",
        "output_gate_headwise",
        "low_rank_silu_gates",
        "dim_out",
        "value_dim_head",
        "project_out",
        "add_zero_kv",
        "head_learned_sink",
        "sigmoid",
        "hard",
        "l2_distance",
        "cog_signed",
        "gumbel_softmax",
        "gumbel_softmax_temp",
        "gumbel_softmax_hard",
        "selective",
        "laser",
        "laser_softclamp_value",
        "orthog_projected_values",
        "orthog_projected_values_per_head",
        "attend_sdp_kwargs",
        "learned_value_residual_mix",
        "inverted_attention",
        "use_latent_q",
        "dim_latent_q",
        "use_latent_kv",
        "dim_latent_kv",
        "latent_rope_subheads",
        "data_dependent_alibi",
        "data_dependent_alibi_per_row",
        "data_dependent_alibi_per_row_dim_head",
        "data_dependent_alibi_kwargs",
        "use_rel_proj_pos_bias",
        "rel_proj_num_distance_basis",
        "rel_proj_max_dist",
        "use_cope",
        "cope_max_pos",
        "cope_soft_onehot_pos",
        "cope_talking_heads",
        "rotate_num_heads",
    }
)
# Attention options valid only with the `cross_attn_` prefix in AttentionLayers (x-transformers passes its
# own value for self-attention, or drops the `attn_` one).
CROSS_ONLY_ATTN_OPTIONS = frozenset(
    {"dim_context", "learned_value_residual_mix", "inverted_attention", "rotate_num_heads"}
)
FF_OPTIONS = frozenset(
    {
        "mult",
        "glu",
        "swish",
        "relu_squared",
        "no_bias",
        "dropout",
        "dim_out",
        "glu_mult_bias",
        "solu",
        "post_act_ln",
        "sublayer_dropout",
        "zero_init_output",
        "softclamp_value",
        "glu_softclamp",
        "glu_gate_softclamp_value",
        "glu_up_softclamp_value",
    }
)

# x-transformers options we do not implement, with the value at which they change nothing (their 2.31
# defaults). Passed at that value they are accepted and ignored; at any other value they are rejected.

# AttentionLayers options (every 2.31.10 one is implemented now; kept for the table's shape).
NEUTRAL_LAYER_OPTIONS: dict[str, Any] = {}

# Attention options, valid with the `attn_` and the `cross_attn_` prefix.
NEUTRAL_ATTN_OPTIONS: dict[str, Any] = {
    "talking_heads": False,
    "dim_context": None,
    "output_proj_depth": None,
    "custom_attn_fn": None,
    "hybrid_module": None,
    "hybrid_mask_kwarg": None,
    "hybrid_fold_axial_dim": None,
    "hybrid_learned_mix": False,
    "rotate_num_heads": None,
    "learned_value_residual_mix": False,
    "qkv_receive_diff_residuals": False,
    "inverted_attention": False,
    "flash_pack_seq": False,
}

# FeedForward options, with the `ff_` prefix.
NEUTRAL_FF_OPTIONS: dict[str, Any] = {
    "custom_activation": None,
    "output_proj_depth": None,
}

# TransformerWrapper / ContinuousTransformerWrapper options.
NEUTRAL_WRAPPER_OPTIONS: dict[str, Any] = {
    "embed_num_tokens": {},
    "shift_mem_down": 0,
    "memory_tokens_interspersed_every": None,
    "num_output_heads": 1,
    "l2norm_embed": False,
    "recycling": False,
    "train_max_recycle_steps": 4,
    "looped": False,
    "max_looped_steps": 4,
    "emb_frac_gradient": 1.0,
    "attn_z_loss_weight": 0.0001,
    "average_pool_embed": False,
    "use_cls_token": False,
    "num_cls_tokens": 1,
    "attn_pool": False,
    "num_pooled_tokens": 1,
    "attn_pool_depth": 1,
    "dim_pooled_tokens": None,
    "squeeze_out_last_dim": False,
    "token_emb": None,
    "mixture_of_softmax": False,
    "mixture_of_softmax_k": 4,
    "sigsoftmax_logits": False,
    "ff_deep_embed": False,
    "to_logits": None,
    "add_continuous_pred_head": False,
    "input_not_include_cache": False,
    "project_in": None,
    "project_out": None,
    "probabilistic": False,
}

NEUTRAL_DEFAULTS: dict[str, Any] = {
    **NEUTRAL_LAYER_OPTIONS,
    **NEUTRAL_WRAPPER_OPTIONS,
    **{f"attn_{k}": v for k, v in NEUTRAL_ATTN_OPTIONS.items()},
    **{f"cross_attn_{k}": v for k, v in NEUTRAL_ATTN_OPTIONS.items()},
    **{f"ff_{k}": v for k, v in NEUTRAL_FF_OPTIONS.items()},
}


def _is_neutral(option: str, value: Any) -> bool:
    if option not in NEUTRAL_DEFAULTS:
        return False
    default = NEUTRAL_DEFAULTS[option]
    if isinstance(default, bool) or isinstance(value, bool):  # 1 == True, but a flag is not a count
        return type(default) is type(value) and default == value
    return bool(default == value)


def nearest(option: str, candidates: set[str] | frozenset[str] | list[str]) -> str | None:
    """The supported name closest to `option` (difflib), if any is close enough to be a likely typo."""
    matches = difflib.get_close_matches(option, sorted(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def refuse(owner: str, option: str, value: Any, supported: set[str] | frozenset[str] | list[str]) -> NoReturn:
    """Raise `UnsupportedOptionError` for `option`, naming the nearest supported alternative if one exists."""
    shown = "a module" if _is_module(value) else repr(value)
    hint = nearest(option, supported)
    advice = f"did you mean '{hint}'? " if hint else ""
    kind = (
        "module-valued options are not supported (a spec holds JSON data only)"
        if _is_module(value) or callable(value)
        else "not supported by the xtf core"
    )
    raise UnsupportedOptionError(
        f"{owner}: option '{option}'={shown} is {kind}; {advice}remove it"
        + (f" or use one of: {', '.join(sorted(supported))}" if supported and len(supported) <= 20 else "")
    )


def _is_module(value: Any) -> bool:
    return any(c.__name__ == "Module" and c.__module__.startswith("torch.nn") for c in type(value).__mro__)


def unsupported(owner: str, option: str, value: Any, supported: set[str] | frozenset[str]) -> None:
    """Raise for `option` unless it is neutral at `value`."""
    if _is_neutral(option, value):
        return
    refuse(owner, option, value, supported)


def split_prefixed(
    owner: str, kwargs: dict[str, Any], layer_options: frozenset[str]
) -> tuple[dict, dict, dict]:
    """Split AttentionLayers kwargs into (attn, cross_attn, ff) groups, rejecting anything unknown."""
    attn: dict[str, Any] = {}
    cross: dict[str, Any] = {}
    ff: dict[str, Any] = {}
    supported = (
        set(layer_options)
        | {f"attn_{k}" for k in ATTN_OPTIONS - CROSS_ONLY_ATTN_OPTIONS}
        | {f"cross_attn_{k}" for k in ATTN_OPTIONS}
        | {f"ff_{k}" for k in FF_OPTIONS}
    )
    for key, value in kwargs.items():
        if key.startswith("cross_attn_") and key[len("cross_attn_") :] in ATTN_OPTIONS:
            cross[key[len("cross_attn_") :]] = value
        elif key.startswith("attn_") and key[len("attn_") :] in ATTN_OPTIONS - CROSS_ONLY_ATTN_OPTIONS:
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
