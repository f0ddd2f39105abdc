"""What an attention stack's options build, computed without torch: the option set and the block order.

Migration steps use this to find, e.g., the index of the last block of an old checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import SpecError


@dataclass
class LayerOptions:
    """Every option AttentionLayers implements, with x-transformers 2.31's defaults."""

    dim: int
    depth: int | None = None
    heads: int = 8
    causal: bool = False
    cross_attend: bool = False
    only_cross: bool = False
    use_scalenorm: bool = False
    use_rmsnorm: bool = False
    use_simple_rmsnorm: bool = False
    norm_add_unit_offset: bool = True
    alibi_pos_bias: bool = False
    alibi_num_heads: int | None = None
    rel_pos_bias: bool = False
    rel_pos_num_buckets: int = 32
    rel_pos_max_distance: int = 128
    rotary_pos_emb: bool = False
    rotary_emb_dim: int | None = None
    rotary_xpos: bool = False
    rotary_xpos_scale_base: float = 512
    rotary_interpolation_factor: float = 1.0
    rotary_base_rescale_factor: float = 1.0
    custom_layers: tuple[str, ...] | None = None
    par_ratio: int | None = None
    sandwich_coef: int | None = None
    residual_attn: bool = False
    cross_residual_attn: bool = False
    pre_norm: bool = True
    pre_norm_has_final_norm: bool = True
    sandwich_norm: bool = False
    disable_abs_pos_emb: bool | None = None
    verbose: bool = True
    # Options of x-transformers 2.31.10 added with issue 10 (same defaults).
    only_attn: bool = False
    macaron: bool = False
    pre_and_post_norm: bool = False
    use_dynamic_tanh: bool = False
    dynamic_tanh_init_alpha: float = 1.0
    use_derf: bool = False
    use_adaptive_layernorm: bool = False
    use_adaptive_rmsnorm: bool = False
    use_adaptive_layerscale: bool = False
    dim_condition: int | None = None
    adaptive_condition_mlp: bool = False
    adaptive_condition_mlp_expansion: int = 4
    dynamic_pos_bias: bool = False
    dynamic_pos_bias_log_distance: bool = False
    dynamic_pos_bias_mlp_depth: int = 2
    dynamic_pos_bias_norm: bool = False
    weight_tie_layers: bool = False
    layers_execute_order: tuple[int, ...] | None = None
    gate_residual: bool = False
    orthog_residual: bool = False
    mv_split_residual: bool = False
    residual_fn_kwargs: dict[str, Any] = field(default_factory=dict)
    gated_multi_residual: bool = False
    attn_aggregated_residuals: bool = False
    attn_aggregated_residual_kwargs: dict[str, Any] = field(default_factory=dict)
    rotate_num_heads: int | None = None
    rel_pos_kwargs: dict[str, Any] = field(default_factory=dict)
    polar_pos_emb: bool = False
    polar_bias_uniform_init: bool = False
    qkv_receive_diff_residuals: bool = False
    integrate_layers: bool = False
    layer_integrate_use_softmax: bool = True
    num_residual_streams: int = 1
    hyper_conn_sinkhorn_iters: int = 5
    scale_residual: bool | float = False
    scale_residual_constant: float = 1.0
    depth_scale_residual: bool | float = False
    shift_tokens: int | tuple[int, ...] = 0
    softclamp_output: bool = False
    softclamp_output_value: float = 30.0
    use_layerscale: bool = False
    layerscale_init_value: float = 0.0
    unet_skips: bool = False
    reinject_input: bool = False
    learned_reinject_input_gate: bool = False
    add_value_residual: bool = False
    learned_value_residual_mix: bool = True
    # Training-only options (no weights, no effect in eval mode).
    zero_init_branch_output: bool = False
    layer_dropout: float | tuple[float, ...] = 0.0
    cross_attn_tokens_dropout: float = 0.0
    # Legacy behaviours, set only by migrations of old x-transformers checkpoints (see docs/compatibility.md).
    xtf_norm_bias: bool = False  # LayerNorms carry a bias `beta` (x-transformers < 1.27)
    xtf_final_norm_layernorm: bool = False  # the final norm is a LayerNorm whatever the norm kind (< 1.15)
    xtf_rotary_values: bool = False  # rotary positions also rotate the values (0.15 - 1.19)
    xtf_gate_values_bias: bool = False  # the value gate projection has a bias (< 2.26)
    xtf_unnormed_mems: bool = False  # Transformer-XL memories skip the pre-norm (< 1.27.5)
    xtf_attn_out_bias: bool = False  # attention output projections have a bias (< 0.26)
    xtf_normed_residual: bool = False  # pre-norm blocks add their branch to the normed input (0.4.0 - 0.7.3)
    xtf_no_final_norm: bool = False  # a bare stack ends unnormed: no final norm, no last post-norm (< 1.15)


LAYER_OPTIONS = frozenset(f.name for f in fields(LayerOptions))


def default_block(o: LayerOptions) -> tuple[str, ...]:
    """The block types of one transformer layer in the plain `depth` layout."""
    if o.cross_attend and not o.only_cross:
        block: tuple[str, ...] = ("a", "c", "f")
    elif o.cross_attend:
        block = ("c", "f")
    else:
        block = ("a", "f")
    if o.macaron:
        block = ("f",) + block
    if o.only_attn:
        block = tuple(t for t in block if t != "f")
    return block


def layer_types_for(o: LayerOptions) -> tuple[str, ...]:
    """The block order: 'a' self-attention, 'c' cross-attention, 'f' feed-forward."""
    block = default_block(o)
    if o.weight_tie_layers:
        if o.custom_layers is not None or o.par_ratio is not None or o.sandwich_coef is not None:
            raise SpecError(
                "weight_tie_layers cannot be combined with custom_layers, par_ratio or sandwich_coef"
            )
        if o.depth is None:
            raise SpecError("weight_tie_layers needs 'depth'")
        if o.layers_execute_order is not None:
            raise SpecError("weight_tie_layers cannot be combined with layers_execute_order")
        return block
    if o.only_attn and o.custom_layers is not None and "f" in o.custom_layers:
        raise SpecError("only_attn cannot be combined with feed-forward blocks in custom_layers")
    types = _layer_types(o, block)
    return tuple(t for t in types if t != "f") if o.only_attn else types


def layers_execute_order_for(o: LayerOptions, num_layers: int) -> tuple[int, ...]:
    """The order in which the stored blocks run (weight tying repeats the one stored block `depth` times)."""
    if o.weight_tie_layers:
        assert o.depth is not None
        return tuple(range(num_layers)) * o.depth
    if o.layers_execute_order is not None:
        order = tuple(o.layers_execute_order)
        if any(not 0 <= i < num_layers for i in order):
            raise SpecError(f"layers_execute_order {order} names a block outside 0..{num_layers - 1}")
        return order
    return tuple(range(num_layers))


def default_block_length(o: LayerOptions) -> int:
    """Blocks per transformer layer for the plain `depth` layout (1 for custom, par and sandwich layouts)."""
    if o.custom_layers is not None or o.par_ratio is not None or o.sandwich_coef is not None:
        return 1
    return len(default_block(o))


def _layer_types(o: LayerOptions, default_block: tuple[str, ...]) -> tuple[str, ...]:
    if o.custom_layers is not None:
        bad = [t for t in o.custom_layers if t not in ("a", "c", "f")]
        if bad:
            raise SpecError(f"custom_layers may only hold 'a', 'c' and 'f', got {bad[0]!r}")
        return tuple(o.custom_layers)
    if o.depth is None:
        raise SpecError("'depth' is required unless 'custom_layers' is given")
    if o.par_ratio is not None:
        par_depth = o.depth * len(default_block)
        if not 1 < o.par_ratio <= par_depth:
            raise SpecError(f"par_ratio={o.par_ratio} out of range (1, {par_depth}]")
        default_block = tuple(t for t in default_block if t != "f")
        par_attn = par_depth // o.par_ratio
        depth_cut = par_depth * 2 // 3
        par_width = (depth_cut + depth_cut // par_attn) // par_attn
        if len(default_block) > par_width:
            raise SpecError(f"par_ratio={o.par_ratio} leaves no room for the attention block")
        par_block = default_block + ("f",) * (par_width - len(default_block))
        par_head = par_block * par_attn
        return par_head + ("f",) * (par_depth - len(par_head))
    if o.sandwich_coef is not None:
        if not 0 < o.sandwich_coef <= o.depth:
            raise SpecError(f"sandwich_coef={o.sandwich_coef} must be in (0, depth={o.depth}]")
        sc = o.sandwich_coef
        return ("a",) * sc + default_block * (o.depth - sc) + ("f",) * sc
    return default_block * o.depth
