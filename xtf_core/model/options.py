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
    }
)
FF_OPTIONS = frozenset({"mult", "glu", "swish", "relu_squared", "no_bias", "dropout"})

# x-transformers options we do not implement, with the value at which they change nothing (their 2.31
# defaults). Passed at that value they are accepted and ignored; at any other value they are rejected.

# AttentionLayers options.
NEUTRAL_LAYER_OPTIONS: dict[str, Any] = {
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
    "only_attn": False,
    "use_derf": False,
    "dynamic_tanh_init_alpha": 1.0,
    "use_adaptive_layerscale": False,
    "dim_condition": None,
    "adaptive_condition_mlp": False,
    "adaptive_condition_mlp_expansion": 4,
    "dynamic_pos_bias_log_distance": False,
    "dynamic_pos_bias_mlp_depth": 2,
    "dynamic_pos_bias_norm": False,
    "rotate_num_heads": None,
    "polar_pos_emb": False,
    "polar_bias_uniform_init": False,
    "layers_execute_order": None,
    "attn_aggregated_residuals": False,
    "attn_aggregated_residual_kwargs": {},
    "orthog_residual": False,
    "mv_split_residual": False,
    "gated_multi_residual": False,
    "depth_scale_residual": False,
    "softclamp_output_value": 30.0,
    "layerscale_init_value": 0.0,
    "integrate_layers": False,
    "layer_integrate_use_softmax": True,
    "qkv_receive_diff_residuals": False,
    "reinject_input": False,
    "learned_reinject_input_gate": False,
    "learned_value_residual_mix": True,
    "rel_pos_kwargs": {},
    "residual_fn_kwargs": {},
    "hyper_conn_sinkhorn_iters": 5,
}

# Attention options, valid with the `attn_` and the `cross_attn_` prefix.
NEUTRAL_ATTN_OPTIONS: dict[str, Any] = {
    "num_mem_kv": 0,
    "talking_heads": False,
    "on_attn": False,
    "sparse_topk": None,
    "head_scale": False,
    "gate_value_heads": False,
    "zero_init_output": False,
    "dim_context": None,
    "pre_talking_heads": False,
    "post_talking_heads": False,
    "pre_scale_post_talking_heads": False,
    "sparse_topk_straight_through": False,
    "sublayer_dropout": 0.0,
    "swiglu_values": False,
    "gate_values_rank": None,
    "gate_values_headwise": False,
    "output_gate": False,
    "output_gate_rank": None,
    "output_gate_headwise": False,
    "low_rank_silu_gates": True,
    "output_proj_depth": None,
    "hard": False,
    "max_attend_past": None,
    "qk_rmsnorm": False,
    "k_rmsnorm": False,
    "value_rmsnorm": False,
    "l2_distance": False,
    "sigmoid": False,
    "gumbel_softmax": False,
    "gumbel_softmax_temp": 1.0,
    "gumbel_softmax_hard": True,
    "selective": False,
    "cog_signed": False,
    "custom_attn_fn": None,
    "hybrid_module": None,
    "hybrid_mask_kwarg": None,
    "hybrid_fold_axial_dim": None,
    "hybrid_learned_mix": False,
    "value_dim_head": None,
    "dim_out": None,
    "add_zero_kv": False,
    "head_learned_sink": False,
    "rotate_num_heads": None,
    "data_dependent_alibi": False,
    "data_dependent_alibi_per_row": False,
    "data_dependent_alibi_per_row_dim_head": 8,
    "data_dependent_alibi_kwargs": {},
    "use_rel_proj_pos_bias": False,
    "rel_proj_num_distance_basis": 16,
    "rel_proj_max_dist": 1024,
    "use_cope": False,
    "cope_max_pos": 16,
    "cope_soft_onehot_pos": False,
    "cope_talking_heads": False,
    "softclamp_logits": False,
    "logit_softclamp_value": 50.0,
    "learned_value_residual_mix": False,
    "orthog_projected_values": False,
    "orthog_projected_values_per_head": False,
    "laser": False,
    "laser_softclamp_value": 15.0,
    "qkv_receive_diff_residuals": False,
    "project_out": None,
    "use_latent_q": False,
    "dim_latent_q": None,
    "use_latent_kv": False,
    "dim_latent_kv": None,
    "latent_rope_subheads": None,
    "onnxable": False,
    "inverted_attention": False,
    "attend_sdp_kwargs": {"enable_flash": True, "enable_math": True, "enable_mem_efficient": True},
    "flash_pack_seq": False,
}

# FeedForward options, with the `ff_` prefix.
NEUTRAL_FF_OPTIONS: dict[str, Any] = {
    "post_act_ln": False,
    "zero_init_output": False,
    "glu_mult_bias": False,
    "dim_out": None,
    "solu": False,
    "custom_activation": None,
    "sublayer_dropout": 0.0,
    "output_proj_depth": None,
    "softclamp_value": None,
    "glu_softclamp": False,
    "glu_gate_softclamp_value": 4.0,
    "glu_up_softclamp_value": 25.0,
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
        + (f" or use one of: {', '.join(sorted(supported))}" if supported else "")
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
