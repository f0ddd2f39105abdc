"""Shared knowledge for the x-transformers steps: where the attention stacks of a spec live.

A spec holds one or two attention stacks. Each `Stack` says where its tensors sit (`layers` prefix),
where its wrapper's tensors sit, and lets a step read and rewrite the stack's options in the spec,
whatever the spec's shape (TransformerWrapper, ContinuousTransformerWrapper, XTransformer, a bare stack).
No torch here: these steps must be importable by header-only tools.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from xtf_core.chain import ValueTransform
from xtf_core.errors import MigrationError

from ._history import StackOptions, block_order, branch_wrappers, stack_options

WRAPPERS = ("TransformerWrapper", "ContinuousTransformerWrapper")
XT_WRAPPER_KEYS = (
    "num_tokens",
    "max_seq_len",
    "emb_dropout",
    "scaled_sinu_pos_emb",
    "use_abs_pos_emb",
    "num_memory_tokens",
)


@dataclass
class Stack:
    """One attention stack inside a spec, with accessors into the (mutable) spec dict."""

    spec: dict[str, Any]
    layers: str  # prefix of the stack's tensors, e.g. "attn_layers." or "decoder.net.attn_layers."
    wrapper: (
        str | None
    )  # prefix of the wrapper's tensors ("", "encoder.", "decoder.net."), None for a bare stack
    wrapper_class: str | None
    option_prefix: str = ""  # "enc_"/"dec_" inside an XTransformer spec
    node: dict[str, Any] | None = None  # the dict holding the stack's options (None: flat XTransformer keys)
    wrapper_node: dict[str, Any] | None = None

    def get(self, key: str, default: Any = None) -> Any:
        if self.node is not None:
            return self.node.get(key, default)
        return self.spec.get(self.option_prefix + key, default)

    def set(self, key: str, value: Any) -> None:
        if self.node is not None:
            self.node[key] = value
        else:
            self.spec[self.option_prefix + key] = value

    def pop(self, key: str) -> Any:
        if self.node is not None:
            return self.node.pop(key, None)
        return self.spec.pop(self.option_prefix + key, None)

    def wrapper_get(self, key: str, default: Any = None) -> Any:
        if self.wrapper_node is not None:
            return self.wrapper_node.get(key, default)
        if self.option_prefix:
            return self.spec.get(self.option_prefix + key, default)
        return default

    def wrapper_set(self, key: str, value: Any) -> None:
        if self.wrapper_node is not None:
            self.wrapper_node[key] = value
        elif self.option_prefix:
            self.spec[self.option_prefix + key] = value

    def wrapper_pop(self, key: str) -> Any:
        if self.wrapper_node is not None:
            return self.wrapper_node.pop(key, None)
        return self.spec.pop(self.option_prefix + key, None) if self.option_prefix else None

    # derived facts -------------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.spec["dim"] if self.option_prefix else self.get("dim")

    @property
    def options(self) -> StackOptions:
        """The stack's options as the mapped releases read them (pinned in `_history`, not the live core)."""
        if self.node is not None:
            raw = dict(self.node)
        else:
            p = self.option_prefix
            raw = {k[len(p) :]: v for k, v in self.spec.items() if k.startswith(p)}
            if p == "dec_":
                raw["causal"], raw["cross_attend"] = True, True
        if self.node is not None and self.node.get("class") == "Decoder":
            raw["causal"] = True
        if self.node is not None and self.node.get("class") == "CrossAttender":
            raw["cross_attend"], raw["only_cross"] = True, True
        return stack_options(raw)

    @property
    def layer_types(self) -> tuple[str, ...]:
        return block_order(self.options)

    def branch(self, index: int) -> str:
        """Prefix of block `index`'s tensors: `layers.i.1.`, plus `fn.` per wrapper (macaron, shift, layer scale)."""
        wrappers = branch_wrappers(self.options, index, self.layer_types[index])
        return f"{self.layers}layers.{index}.1.{wrappers}"

    def wrapped(self, layer_type: str) -> list[str]:
        """The distinct wrapper paths ('', 'fn.', ...) of the blocks of one type, for wildcard patterns."""
        if not any(
            self.get(k) for k in ("macaron", "shift_tokens", "use_layerscale", "use_adaptive_layerscale")
        ):
            return [""]  # no wrapper option: the block order need not be read
        o, types = self.options, self.layer_types
        return sorted({branch_wrappers(o, i, t) for i, t in enumerate(types) if t == layer_type} or {""})

    @property
    def norm_kind(self) -> str:
        o = self.options
        if o.use_adaptive_layernorm:
            return "adaptive_layernorm"
        if o.use_adaptive_rmsnorm:
            return "adaptive_rmsnorm"
        if o.use_scalenorm:
            return "scalenorm"
        if o.use_rmsnorm:
            return "rmsnorm"
        if o.use_simple_rmsnorm:
            return "simple_rmsnorm"
        return "layernorm"

    @property
    def rotary(self) -> bool:
        return bool(self.get("rotary_pos_emb") or self.get("rotary_xpos"))

    @property
    def dim_head(self) -> int:
        return self.get("attn_dim_head", 64)

    @property
    def rotary_dim(self) -> int:
        """The rotary dimension as x-transformers before 1.42.18 computed it (floored at 32), unless the spec
        says the file rotates fewer features (`xtf_rotary_dim_unfloored`: narrow heads from before 0.11.4)."""
        if self.get("xtf_rotary_dim_unfloored"):
            return self.get("rotary_emb_dim")
        return max(self.get("rotary_emb_dim") or self.dim_head // 2, 32)

    def norm_modules(self) -> list[tuple[str, str]]:
        """(module prefix, kind) of every norm in the stack, kind in layernorm/rmsnorm/scalenorm."""
        o, kind = self.options, self.norm_kind
        found: list[tuple[str, str]] = []
        if kind != "simple_rmsnorm":
            slots = [0] if o.pre_norm else [2]
            if o.sandwich_norm:
                slots.append(1)
            for index in range(len(self.layer_types)):
                for slot in sorted(slots):
                    found.append((f"{self.layers}layers.{index}.0.{slot}.", kind))
        if self.get("xtf_no_final_norm"):  # a bare stack from before 1.15.0 ends unnormed
            if not o.pre_norm and found:
                found.pop()
            return found
        if self.get("xtf_final_norm_layernorm") and not o.pre_norm and found:
            found[-1] = (found[-1][0], "layernorm")
        if o.pre_norm and o.pre_norm_has_final_norm:
            if self.get("xtf_final_norm_layernorm"):
                found.append((f"{self.layers}final_norm.", "layernorm"))
            elif kind != "simple_rmsnorm":
                found.append((f"{self.layers}final_norm.", kind))
        return found


def stacks(spec: dict[str, Any]) -> list[Stack]:
    """The attention stacks of a spec (mutable views into it)."""
    cls = spec.get("class")
    if cls in WRAPPERS:
        node = spec["attn_layers"]
        return [Stack(spec, "attn_layers.", "", cls, node=node, wrapper_node=spec)]
    if cls == "XTransformer":
        return [
            Stack(spec, "encoder.attn_layers.", "encoder.", "TransformerWrapper", option_prefix="enc_"),
            Stack(
                spec, "decoder.net.attn_layers.", "decoder.net.", "TransformerWrapper", option_prefix="dec_"
            ),
        ]
    if cls in ("Encoder", "Decoder", "CrossAttender", "AttentionLayers"):
        return [Stack(spec, "", None, None, node=spec)]
    if cls == "ViTransformerWrapper":  # its own patch embedding; the stack as under a wrapper
        return [Stack(spec, "attn_layers.", None, None, node=spec["attn_layers"])]
    if isinstance(spec.get("net"), dict):  # a training wrapper: the wrapped model's tensors sit under `net.`
        return [
            replace(
                inner,
                layers=f"net.{inner.layers}",
                wrapper=None if inner.wrapper is None else f"net.{inner.wrapper}",
            )
            for inner in stacks(spec["net"])
        ]
    raise MigrationError(f"spec class {cls!r} is not an x-transformers model this chain knows")


def layernorms(spec: dict[str, Any]) -> list[str]:
    """Module prefixes of every LayerNorm of the model (stack norms, final norms, post-embedding norms)."""
    found = []
    for stack in stacks(spec):
        found += [prefix for prefix, kind in stack.norm_modules() if kind == "layernorm"]
        if stack.wrapper is not None and stack.wrapper_get("post_emb_norm"):
            found.append(f"{stack.wrapper}post_emb_norm.")
        if stack.get(
            "ff_post_act_ln"
        ):  # the feed-forward's norm after its activation (x-transformers 0.20.2 on)
            types = stack.layer_types
            found += [f"{stack.branch(i)}ff.1." for i, t in enumerate(types) if t == "f"]
    return found


def sqrt_rescale(pattern: str, width: int, up: bool, label: str) -> ValueTransform:
    """Multiply (`up`) or divide the tensors matching `pattern` by sqrt(`width`); the reverse undoes it."""
    root = math.sqrt(width)
    grow, shrink = (lambda t, r=root: t * r), (lambda t, r=root: t / r)
    return ValueTransform(
        pattern,
        forward=grow if up else shrink,
        backward=shrink if up else grow,
        description=f"{label} {'*' if up else '/'} sqrt({width})",
    )
