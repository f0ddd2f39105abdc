"""What the x-transformers steps know of an attention stack's options, pinned here and not read from the core.

A step must mean the same thing after the model core grows: the core's option defaults and block order may
change in a later xtf release, and an old step reading them would silently plan other ops for the same
file. So the few facts the steps use (the block order and which norms exist) are written down once, as the
x-transformers releases the chain maps computed them, and never imported from `xtf_core.model`.

Every option below had the same default in every release the chain maps (0.x to 2.31.10); an era whose
defaults differ must get its own pinned defaults here, keyed by the first release of that era.
Options that change the block order but whose history no step maps yet (`only_attn`, ...) are refused by
name rather than ignored: a step cannot place a tensor in a layout it does not know. `weight_tie_layers`
(x-transformers 1.21.4 on) stores one block set and runs it `depth` times; `layers_execute_order` (1.21.4
on) only changes which stored block runs when: the stored order below is what steps rename. With
`use_adaptive_layernorm` / `use_adaptive_rmsnorm` (1.30.17 / 1.30.18 on) every norm of the stack, the final
one too, is conditioned (`to_gamma`), not a LayerNorm: no LayerNorm step touches it.

Block wrappers: `macaron` (x-transformers 0.0.30 on) wraps every feed-forward in `Scale(0.5, ...)`,
`shift_tokens` (0.16.0 on) wraps the blocks it shifts in `ShiftTokens`, `use_layerscale` (1.30.0 on) wraps
every block in `LayerScale`, in that order, each keeping its block under `.fn.`: a block's tensors sit at
`layers.i.1.` + `fn.` per wrapper in every release that has these options (checked against 0.0.30-2.31.10).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from xtf_core.errors import MigrationError


@dataclass(frozen=True)
class StackOptions:
    """The options of an attention stack that decide its block order and its norms."""

    depth: int | None = None
    causal: bool = False
    cross_attend: bool = False
    only_cross: bool = False
    custom_layers: tuple[str, ...] | None = None
    par_ratio: int | None = None
    sandwich_coef: int | None = None
    pre_norm: bool = True
    pre_norm_has_final_norm: bool = True
    sandwich_norm: bool = False
    use_scalenorm: bool = False
    use_rmsnorm: bool = False
    use_simple_rmsnorm: bool = False
    macaron: bool = False
    shift_tokens: int | tuple[int, ...] = 0
    use_layerscale: bool = False
    use_adaptive_layerscale: bool = False
    weight_tie_layers: bool = False
    use_adaptive_layernorm: bool = False
    use_adaptive_rmsnorm: bool = False
    layers_execute_order: tuple[int, ...] | None = None


STACK_OPTIONS = frozenset(f.name for f in fields(StackOptions))

# Options that change which blocks a stack holds, in what order, or which norms it has, with the value at
# which they change nothing. A stack with another value cannot cross a step until its history is mapped.
UNMAPPED_BLOCK_OPTIONS: dict[str, Any] = {
    "only_attn": False,
    "pre_and_post_norm": False,
    "use_dynamic_tanh": False,
    "use_derf": False,
}


def stack_options(raw: dict[str, Any]) -> StackOptions:
    """Read a stack's options from its spec entries (unknown entries play no part in the block order)."""
    for name, neutral in UNMAPPED_BLOCK_OPTIONS.items():
        if name in raw and raw[name] != neutral and raw[name] is not None:
            raise MigrationError(
                f"option {name!r} changes the block layout, and no migration step maps it to older "
                "releases yet; keep this checkpoint at the current xtf layout"
            )
    known = {k: v for k, v in raw.items() if k in STACK_OPTIONS}
    for name in ("custom_layers", "shift_tokens", "layers_execute_order"):
        if isinstance(known.get(name), list):
            known[name] = tuple(known[name])
    return StackOptions(**known)


def branch_wrappers(o: StackOptions, index: int, layer_type: str) -> str:
    """`fn.` once per module wrapping block `index` (of type `layer_type`): macaron's half step on a
    feed-forward, a token shift, a layer scale; '' for a plain block."""
    shifts = o.shift_tokens if isinstance(o.shift_tokens, tuple) else None
    shift = (shifts[index] if index < len(shifts) else 0) if shifts is not None else o.shift_tokens
    wrappers = (
        int(o.macaron and layer_type == "f")
        + int(bool(shift and shift > 0))
        + int(o.use_layerscale or o.use_adaptive_layerscale)
    )
    return "fn." * wrappers


def block_order(o: StackOptions) -> tuple[str, ...]:
    """The block types in order: 'a' self-attention, 'c' cross-attention, 'f' feed-forward."""
    if o.cross_attend and not o.only_cross:
        block: tuple[str, ...] = ("a", "c", "f")
    elif o.cross_attend:
        block = ("c", "f")
    else:
        block = ("a", "f")
    if o.macaron:  # a half-step feed-forward before each block (every release from 0.0.30)
        block = ("f",) + block
    if o.custom_layers is not None:
        bad = [t for t in o.custom_layers if t not in ("a", "c", "f")]
        if bad:
            raise MigrationError(f"custom_layers may only hold 'a', 'c' and 'f', got {bad[0]!r}")
        return tuple(o.custom_layers)
    if o.depth is None:
        raise MigrationError("'depth' is required unless 'custom_layers' is given")
    if o.weight_tie_layers:  # one stored block set, executed depth times
        return block
    if o.par_ratio is not None:
        par_depth = o.depth * len(block)
        if not 1 < o.par_ratio <= par_depth:
            raise MigrationError(f"par_ratio={o.par_ratio} out of range (1, {par_depth}]")
        block = tuple(t for t in block if t != "f")
        par_attn = par_depth // o.par_ratio
        depth_cut = par_depth * 2 // 3
        par_width = (depth_cut + depth_cut // par_attn) // par_attn
        if len(block) > par_width:
            raise MigrationError(f"par_ratio={o.par_ratio} leaves no room for the attention block")
        par_block = block + ("f",) * (par_width - len(block))
        par_head = par_block * par_attn
        return par_head + ("f",) * (par_depth - len(par_head))
    if o.sandwich_coef is not None:
        if not 0 < o.sandwich_coef <= o.depth:
            raise MigrationError(f"sandwich_coef={o.sandwich_coef} must be in (0, depth={o.depth}]")
        sc = o.sandwich_coef
        return ("a",) * sc + block * (o.depth - sc) + ("f",) * sc
    return block * o.depth
