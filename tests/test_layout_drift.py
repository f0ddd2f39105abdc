"""Layout-drift guard: the core's state-dict layout may only change with a version bump and a migration."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import xtf_core
from xtf_core.chain import default_chain
from xtf_core.checkpoint.layout import diff_layouts

SNAPSHOTS = Path(__file__).parent / "fixtures" / "layouts"
_spec = importlib.util.spec_from_file_location("canonical_layouts", SNAPSHOTS / "canonical.py")
canonical = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(canonical)


def test_current_version_has_a_layout_snapshot() -> None:
    path = canonical.snapshot_path(xtf_core.__version__)
    assert path.is_file(), (
        f"no layout snapshot for xtf {xtf_core.__version__}: a version bump needs "
        f"`python {SNAPSHOTS / 'canonical.py'}` (and a migration step if the layout changed)"
    )


def test_layout_matches_the_snapshot_of_the_current_version() -> None:
    stamp, pinned = canonical.read_layout_snapshot(canonical.snapshot_path(xtf_core.__version__))
    assert stamp == f"xtf=={xtf_core.__version__}"
    now = canonical.current_layouts()
    assert sorted(now) == sorted(pinned), "the canonical config set changed; regenerate the snapshot"
    changed = {name: diff_layouts(pinned[name], now[name]) for name in now}
    changed = {name: d.describe() for name, d in changed.items() if not d.empty}
    assert not changed, (
        "the state-dict layout changed without a version bump and a migration step "
        f"(see docs/migrations.md): {changed}"
    )


def test_every_released_snapshot_has_a_route_to_the_current_version() -> None:
    chain = default_chain()
    for path in sorted(SNAPSHOTS.glob("xtf-*.json")):
        stamp, _ = canonical.read_layout_snapshot(path)
        route = chain.route(stamp)
        assert route.direction in ("none", "upgrade"), (
            f"{path.name}: no upgrade route to xtf {xtf_core.__version__}"
        )


def test_a_layout_change_is_detected_and_named() -> None:
    _, pinned = canonical.read_layout_snapshot(canonical.snapshot_path(xtf_core.__version__))
    tampered = dict(pinned["dec_plain"])
    tampered["attn_layers.final_norm.weight"] = tampered.pop("attn_layers.final_norm.gamma")
    diff = diff_layouts(pinned["dec_plain"], tampered)
    assert not diff.empty
    assert (
        "attn_layers.final_norm.gamma" in diff.describe()
        and "attn_layers.final_norm.weight" in diff.describe()
    )
