"""What an attention stack's options build, computed without torch: the option set and the block order.

Migration steps use this to find, e.g., the index of the last block of an old checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

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
    # Legacy behaviours, set only by migrations of old x-transformers checkpoints (see docs/compatibility.md).
    xtf_norm_bias: bool = False  # LayerNorms carry a bias `beta` (x-transformers < 1.27)
    xtf_final_norm_layernorm: bool = False  # the final norm is a LayerNorm whatever the norm kind (< 1.15)
    xtf_rotary_values: bool = False  # rotary positions also rotate the values (0.15 - 1.19)
    xtf_gate_values_bias: bool = False  # the value gate projection has a bias (< 2.26)
    xtf_unnormed_mems: bool = False  # Transformer-XL memories skip the pre-norm (< 1.27.5)
    xtf_attn_out_bias: bool = False  # attention output projections have a bias (< 0.26)


LAYER_OPTIONS = frozenset(f.name for f in fields(LayerOptions))


def layer_types_for(o: LayerOptions) -> tuple[str, ...]:
    """The block order: 'a' self-attention, 'c' cross-attention, 'f' feed-forward."""
    if o.cross_attend and not o.only_cross:
        default_block: tuple[str, ...] = ("a", "c", "f")
    elif o.cross_attend:
        default_block = ("c", "f")
    else:
        default_block = ("a", "f")
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
