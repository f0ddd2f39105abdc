"""Layout snapshots: the tensor names and shapes a canonical config builds, pinned per release.

A test builds each canonical config, takes `layout_of(model.state_dict())`, and diffs it against the
snapshot committed for the current release. Any difference means the layout changed without a migration
step: write the step, then regenerate the snapshot (see docs/migrations.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Layout = dict[str, list[int]]


def layout_of(state_dict: Mapping[str, Any]) -> Layout:
    """Tensor name -> shape (as a list), sorted by name."""
    return {name: list(tensor.shape) for name, tensor in sorted(state_dict.items())}


@dataclass(frozen=True)
class LayoutDiff:
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


def diff_layouts(old: Mapping[str, list[int]], new: Mapping[str, list[int]]) -> LayoutDiff:
    """Names only in `new` (added), only in `old` (removed), and in both with different shapes."""
    return LayoutDiff(
        added=sorted(set(new) - set(old)),
        removed=sorted(set(old) - set(new)),
        reshaped={
            name: (list(old[name]), list(new[name]))
            for name in sorted(set(old) & set(new))
            if list(old[name]) != list(new[name])
        },
    )


def write_layout_snapshot(path: str | os.PathLike, layouts: Mapping[str, Layout], stamp: str) -> None:
    """Write {"stamp": ..., "configs": {config name: layout}} as stable, diff-friendly JSON."""
    document = {
        "stamp": stamp,
        "configs": {name: dict(sorted(layout.items())) for name, layout in layouts.items()},
    }
    Path(path).write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def read_layout_snapshot(path: str | os.PathLike) -> tuple[str, dict[str, Layout]]:
    """The stamp and the per-config layouts of a snapshot file."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    return document["stamp"], document["configs"]
