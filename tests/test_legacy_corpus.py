"""Consistency of the legacy fixture corpus (tests/fixtures/legacy), produced by real releases.

The fast tests need no network and no x-transformers release. The release test re-runs releases
through their own code and checks that they reproduce the stored files: the same tensor names, shapes
and dtypes exactly, values within a float32 tolerance (another CPU or thread count may round the last
bits differently); like every test marked ``releases`` it installs the releases into ``.xt-releases/``
on first use, and ``XTF_RELEASE_TESTS=0`` or ``-m "not releases"`` leaves it out (see conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"
MANIFEST = json.loads((LEGACY / "manifest.json").read_text())
FIXTURES = MANIFEST["fixtures"]
IDS = [f"{f['release']}/{f['config']}" for f in FIXTURES]

CORE = [
    "dec_plain",
    "enc_postnorm",
    "dec_rmsnorm",
    "dec_scalenorm",
    "dec_rotary",
    "dec_cross",
    "cont_enc",
    "dec_tied",
]


def _meta(fx: dict) -> dict:
    return json.loads((LEGACY / fx["files"][1]).read_text())


def test_manifest_matches_files():
    listed = {rel for fx in FIXTURES for rel in fx["files"]}
    on_disk = {
        p.relative_to(LEGACY).as_posix()
        for p in LEGACY.glob("*/*")
        if p.is_file() and p.parent.name[0].isdigit()
    }
    assert listed == on_disk
    pairs = [(fx["release"], fx["config"]) for fx in FIXTURES]
    assert len(pairs) == len(set(pairs))
    skipped = {(s["release"], s["config"]) for s in MANIFEST["skipped"]}
    assert not skipped & set(pairs)
    assert all(s["reason"] for s in MANIFEST["skipped"])


def test_corpus_covers_the_eras():
    releases = {fx["release"] for fx in FIXTURES}
    # both sides of every boundary below 0.28.4 (eras page)
    for v in ["0.0.9", "0.0.28", "0.0.29", "0.3.5", "0.4.1", "0.4.4", "0.5.0", "0.6.3", "0.6.4", "0.6.7"]:
        assert v in releases
    for v in ["0.7.0", "0.7.3", "0.7.4", "0.8.4", "0.9.0", "0.10.0", "0.11.1", "0.11.2", "0.11.4", "0.11.8"]:
        assert v in releases
    for v in ["0.11.9", "0.14.5", "0.15.0", "0.17.10", "0.17.11", "0.20.1", "0.20.2", "0.20.9", "0.21.1"]:
        assert v in releases
    for v in ["0.23.0", "0.24.0", "0.24.1", "0.25.9", "0.26.0", "0.27.1"]:
        assert v in releases
    for v in [
        "0.28.4",
        "0.32.3",
        "0.33.0",
        "1.0.4",
        "1.2.4",
        "1.4.0",
        "1.14.0",
        "1.15.0",
        "1.17.3",
        "1.18.0",
    ]:
        assert v in releases
    for v in ["1.26.0", "1.26.6", "1.27.0", "1.27.1", "1.31.1", "1.31.3", "1.32.0", "1.42.17", "1.42.18"]:
        assert v in releases
    for v in ["1.44.8", "2.0.5", "2.3.27", "2.11.24", "2.25.5", "2.26.0", "2.30.4", "2.30.5", "2.31.10"]:
        assert v in releases
    by_release: dict[str, set[str]] = {}
    for fx in FIXTURES:
        by_release.setdefault(fx["release"], set()).add(fx["config"])
    skipped = {(s["release"], s["config"]) for s in MANIFEST["skipped"]}
    for v in ["0.28.4", "1.0.4", "1.32.0", "2.31.10"]:
        for name in CORE:
            assert name in by_release[v] or (v, name) in skipped, (v, name)


@pytest.mark.parametrize("fx", FIXTURES, ids=IDS)
def test_fixture(fx):
    pt, meta_path, io_path = (LEGACY / rel for rel in fx["files"])
    assert hashlib.sha256(pt.read_bytes()).hexdigest() == fx["sha256_pt"]
    meta = json.loads(meta_path.read_text())
    assert meta["release"] == fx["release"] and meta["config_name"] == fx["config"]
    assert meta["config"]["class"] in ("TransformerWrapper", "ContinuousTransformerWrapper", "XTransformer")

    sd = torch.load(pt, weights_only=True, map_location="cpu")
    assert sd and all(isinstance(v, torch.Tensor) for v in sd.values())

    io = load_file(str(io_path))
    assert torch.isfinite(io["out"]).all()
    assert list(io["out"].shape) == meta["output_shape"]
    for value in meta["forward_kwargs"].values():
        for key in [value] if isinstance(value, str) else value:
            assert key in io, key

    buffers = set(meta["persistent_buffers"])
    assert buffers <= set(sd)
    for key, t in sd.items():
        if key in buffers or not t.is_floating_point():
            continue
        flat = t.reshape(-1)
        if flat.numel() == 1:
            assert float(flat) not in (0.0, 1.0), key
            continue
        # perturbed: no parameter is constant (all ones gains, all zeros biases, ...)
        assert not bool((flat == flat[0]).all()), f"{key} is constant {float(flat[0])}"


@pytest.mark.releases
@pytest.mark.parametrize("release", ["0.0.9", "0.28.4", "1.31.3", "2.31.10"])
def test_release_reproduces_its_fixtures(release, tmp_path):
    sys.path.insert(0, str(LEGACY))
    try:
        import generate
    finally:
        sys.path.remove(str(LEGACY))
    result = generate.run_release(release, tmp_path)
    expected = {f["config"]: f for f in FIXTURES if f["release"] == release}
    assert {f["config"] for f in result["fixtures"]} == set(expected)
    for fx in expected.values():
        pt, meta, io = fx["files"]
        assert_same_tensors(
            torch.load(tmp_path / pt, weights_only=True, map_location="cpu"),
            torch.load(LEGACY / pt, weights_only=True, map_location="cpu"),
            pt,
        )
        assert_same_tensors(load_file(str(tmp_path / io)), load_file(str(LEGACY / io)), io)
        fresh_meta, stored_meta = (json.loads((root / meta).read_text()) for root in (tmp_path, LEGACY))
        # the torch that generated the corpus is a record, not a property of the release
        assert {k: v for k, v in fresh_meta.items() if k != "torch"} == {
            k: v for k, v in stored_meta.items() if k != "torch"
        }, meta


# float32 outputs of small models: kernels chosen by CPU model and thread count may differ in the last bits
RTOL = 1e-5
ATOL = 1e-5


def assert_same_tensors(fresh: dict, stored: dict, where: str) -> None:
    """Same names, dtypes and shapes exactly; integer and bool tensors equal; floats within RTOL/ATOL."""
    assert sorted(fresh) == sorted(stored), where
    for name, expected in stored.items():
        got = fresh[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, (where, name)
        if expected.is_floating_point():
            torch.testing.assert_close(
                got, expected, rtol=RTOL, atol=ATOL, msg=lambda m, name=name: f"{where} {name}: {m}"
            )
        else:
            assert torch.equal(got, expected), (where, name)


def test_tolerant_comparison_sees_real_differences():
    stored = {"out": torch.ones(2, 3), "ids": torch.arange(3)}
    last_bits = {"out": torch.ones(2, 3) + 1e-7, "ids": torch.arange(3)}
    assert_same_tensors(last_bits, stored, "last bits")
    for changed in (
        {"out": torch.ones(2, 3) + 1e-3, "ids": torch.arange(3)},
        {"out": torch.ones(3, 2), "ids": torch.arange(3)},
        {"out": torch.ones(2, 3, dtype=torch.float64), "ids": torch.arange(3)},
        {"out": torch.ones(2, 3), "ids": torch.arange(1, 4)},
        {"out": torch.ones(2, 3)},
    ):
        with pytest.raises(AssertionError):
            assert_same_tensors(changed, stored, "changed")
