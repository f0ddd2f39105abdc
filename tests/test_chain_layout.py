"""Layouts: the one diff names added, removed and reshaped tensors; layout snapshots round-trip."""

import importlib.util
from pathlib import Path

import torch

from xtf_core.checkpoint.layout import diff_layouts, layout_of

_spec = importlib.util.spec_from_file_location(
    "canonical_layouts", Path(__file__).parent / "fixtures" / "layouts" / "canonical.py"
)
canonical = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(canonical)
write_layout_snapshot, read_layout_snapshot = canonical.write_layout_snapshot, canonical.read_layout_snapshot


def test_layout_and_diff(tmp_path):
    old = layout_of({"b": torch.zeros(2, 3), "a": torch.zeros(4), "gone": torch.zeros(1)})
    assert list(old) == ["a", "b", "gone"] and old["b"] == [2, 3]
    new = layout_of({"a": torch.zeros(4), "b": torch.zeros(3, 2), "fresh": torch.zeros(5)})
    diff = diff_layouts(old, new)
    assert diff.added == ["fresh"] and diff.removed == ["gone"] and diff.reshaped == {"b": ([2, 3], [3, 2])}
    assert not diff.empty and "~ b: [2, 3] -> [3, 2]" in diff.describe()
    assert diff_layouts(old, old).empty

    path = tmp_path / "layout.json"
    write_layout_snapshot(path, {"tiny-decoder": new}, "xtf==0.1.0")
    stamp, configs = read_layout_snapshot(path)
    assert stamp == "xtf==0.1.0" and diff_layouts(configs["tiny-decoder"], new).empty
