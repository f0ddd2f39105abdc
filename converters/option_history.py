"""Release ranges in which an option computed something no other release computes, or did not run at all.

Measured against the real releases (`tests/test_option_history.py`, bisected to adjacent releases with
`tests/option_families.py`): outside these ranges an option's layout and function are bridged by the chain's
steps; inside them a checkpoint using the option is refused by name, with the reason, on `convert` (from
that release) and on `export` (to it). Layout changes of an option are steps, not entries here. No torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from packaging.version import Version

from xtf_core.errors import ConversionError


@dataclass(frozen=True)
class RefusedRange:
    option: str  # a stack option (`attn_layers.` in a wrapper) or a wrapper option
    first: str  # first release of the range
    last: str  # last release of the range (inclusive)
    reason: str

    def holds(self, release: str) -> bool:
        return Version(self.first) <= Version(release) <= Version(self.last)


REFUSED: tuple[RefusedRange, ...] = (
    RefusedRange(
        "attn_on_attn",
        "0.0.9",
        "0.3.4",
        "its output was a GEGLU over twice the inner width (`to_out.proj`), a layout and function no later "
        "release has (0.3.5 made it Linear + GLU)",
    ),
    RefusedRange(
        "attn_pre_talking_heads",
        "0.0.9",
        "0.2.4",
        "its post-softmax projection was applied to the logits before the softmax (fixed in 0.2.5)",
    ),
    RefusedRange(
        "attn_sparse_topk",
        "1.12.0",
        "1.16.18",
        "it did not run (NameError / UnboundLocalError on `dots` in the attention), fixed in 1.16.19",
    ),
    RefusedRange(
        "attn_sparse_topk",
        "1.16.19",
        "1.37.9",
        "its mask was inverted: it kept the logits below the k-th largest (`sim < top_values`), fixed in 1.37.10",
    ),
    RefusedRange(
        "dynamic_pos_bias",
        "0.25.0",
        "1.6.3",
        "its position MLP used ReLU; 1.6.4 on (and xtf) use SiLU",
    ),
    RefusedRange(
        "use_dynamic_tanh",
        "2.1.30",
        "2.1.30",
        "its first release kept one scalar alpha, gamma and beta per norm (per-feature from 2.1.31), a "
        "one-release layout",
    ),
    RefusedRange(
        "cross_attend",
        "1.42.27",
        "1.42.27",
        "its cross-attention blocks built an unused `to_value_residual_mix` (a one-release layout; 1.42.26 "
        "and 1.42.28 do not)",
    ),
    RefusedRange(
        "macaron",
        "0.6.4",
        "0.20.7",
        "it did not run: `Scale` unpacked the feed-forward's tensor output as a tuple (TypeError), fixed in 0.20.8",
    ),
)


def _options(config: dict[str, Any]) -> dict[str, Any]:
    """The options of a spec as one flat dict (wrapper options, then its stack's)."""
    found = {k: v for k, v in config.items() if k != "attn_layers"}
    layers = config.get("attn_layers")
    if isinstance(layers, dict):
        found.update(layers)
    if config.get("class") == "XTransformer" or found.get("class") == "CrossAttender":
        found["cross_attend"] = True  # these always cross-attend
    return found


def _set(value: Any) -> bool:
    return value not in (None, False, 0, 0.0, (), [])


def check(config: dict[str, Any], release: str, where: str) -> None:
    """Raise ConversionError naming the first option `config` sets inside a range refused for `release`."""
    options = _options(config)
    for entry in REFUSED:
        if _set(options.get(entry.option)) and entry.holds(release):
            raise ConversionError(
                f"{where}: option {entry.option!r} in x-transformers {release} (refused for "
                f"{entry.first}-{entry.last}): {entry.reason}"
            )
