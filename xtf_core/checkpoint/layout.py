"""Layouts (tensor name -> shape) and the one diff between two of them, as every check and error uses it.

A checkpoint's layout comes from its header or its tensors, a model's from its state dict; the load
check, the converters' layout check and the layout-drift guard all diff them here. No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Layout = dict[str, list[int]]


def layout_of(tensors: Mapping[str, Any]) -> Layout:
    """Tensor name -> shape (a list), sorted by name; values are tensors or shapes."""
    return {name: list(getattr(value, "shape", value)) for name, value in sorted(tensors.items())}


@dataclass(frozen=True)
class LayoutDiff:
    """How `new` differs from `old`: names only in `new`, only in `old`, and in both with other shapes."""

    added: list[str]
    removed: list[str]
    reshaped: dict[str, tuple[list[int], list[int]]]

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.reshaped)

    def describe(self) -> str:
        lines = [f"+ {name}" for name in self.added]
        lines += [f"- {name}" for name in self.removed]
        lines += [f"~ {name}: {old} -> {new}" for name, (old, new) in self.reshaped.items()]
        return "\n".join(lines) if lines else "no layout change"


def diff_layouts(old: Mapping[str, Any], new: Mapping[str, Any]) -> LayoutDiff:
    """Diff two layouts (name -> shape, or name -> tensor); shapes compare as lists."""
    old, new = layout_of(old), layout_of(new)
    return LayoutDiff(
        added=sorted(set(new) - set(old)),
        removed=sorted(set(old) - set(new)),
        reshaped={
            name: (old[name], new[name]) for name in sorted(set(old) & set(new)) if old[name] != new[name]
        },
    )
