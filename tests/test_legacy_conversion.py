"""Every checkpoint from a real x-transformers release converts, loads and computes what it computed there."""

from __future__ import annotations

from pathlib import Path

import pytest
from legacy_fixtures import Fixture, all_fixtures

import xtf_core
from xtf_converters import xtransformers
from xtf_core.chain import migrate_file
from xtf_core.errors import ConversionError
from xtf_core.verification import verify_checkpoint

TOLERANCE = 1e-4
FIXTURES = all_fixtures()
CONVERTIBLE = [f for f in FIXTURES if f.refused is None]


@pytest.mark.parametrize("fixture", CONVERTIBLE, ids=lambda f: f.id)
def test_convert_load_migrate_and_export_reproduce_the_release(tmp_path: Path, fixture: Fixture) -> None:
    stamped = tmp_path / "stamped.safetensors"
    xtransformers.convert(fixture.pt, stamped, release=fixture.release, config=fixture.config)
    assert fixture.max_diff(fixture.run(xtf_core.load(stamped))) <= TOLERANCE

    current = tmp_path / "current.safetensors"
    migrate_file(stamped, current)
    assert fixture.max_diff(fixture.run(xtf_core.load(current))) <= TOLERANCE
    assert verify_checkpoint(current).checked == "fingerprint"  # recorded at conversion, still holds

    exported = tmp_path / "exported.pt"
    xtransformers.export(current, exported, release=fixture.release)
    again = tmp_path / "again.safetensors"
    xtransformers.convert(exported, again, release=fixture.release, config=fixture.config)
    assert fixture.max_diff(fixture.run(xtf_core.load(again))) <= TOLERANCE


@pytest.mark.parametrize("fixture", [f for f in FIXTURES if f.refused], ids=lambda f: f.id)
def test_unsupported_releases_and_options_are_refused_clearly(tmp_path: Path, fixture: Fixture) -> None:
    with pytest.raises(ConversionError, match=fixture.refused):
        xtransformers.convert(
            fixture.pt, tmp_path / "x.safetensors", release=fixture.release, config=fixture.config
        )


def _one_per_release_and_config_kind() -> list[Fixture]:
    seen, picked = set(), []
    for f in CONVERTIBLE:
        kind = f.name.split("_")[0]
        if (f.release, kind) not in seen:
            seen.add((f.release, kind))
            picked.append(f)
    return picked


@pytest.mark.parametrize("fixture", _one_per_release_and_config_kind(), ids=lambda f: f.id)
def test_era_detection_is_right_or_asks_for_the_release(tmp_path: Path, fixture: Fixture) -> None:
    out = tmp_path / "detected.safetensors"
    try:
        report = xtransformers.convert(fixture.pt, out, release=None, config=fixture.config)
    except ConversionError as exc:
        assert "name the release" in str(exc)
        return
    assert report.why
    assert fixture.max_diff(fixture.run(xtf_core.load(out))) <= TOLERANCE


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"depth": 3}, "missing 'attn_layers.layers.4.0.0.bias'"),
        ({"dim": 16}, "has shape"),
        ({"heads": 4}, "has shape"),
    ],
)
def test_mismatched_config_names_the_first_disagreeing_key(
    tmp_path: Path, change: dict, expected: str
) -> None:
    fixture = next(f for f in CONVERTIBLE if f.id == "1.26.0/dec_plain")
    config = {**fixture.config, "attn_layers": {**fixture.config["attn_layers"], **change}}
    with pytest.raises(ConversionError, match=expected):
        xtransformers.convert(fixture.pt, tmp_path / "x.safetensors", release="1.26.0", config=config)
