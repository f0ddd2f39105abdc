"""Acceptance against real releases: a checkpoint saved with the current xtf, locked, then pinned to an
x-transformers release and brought there with `xtf migrate --to-lock`, is stamped with that release, and
the state dict exported from it loads in that very release (strict=True) and computes the same outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from legacy_fixtures import Fixture
from xt_releases import release_dir, run_in_release

import xtf_core
from xtf_cli.cli import main
from xtf_converters import xtransformers
from xtf_core.chain import migrate_file
from xtf_core.checkpoint.header import read_checkpoint_headers

TOLERANCE = 1e-4
RUNNER = """
import json, sys, torch, x_transformers
job = json.load(open(sys.argv[1]))

def build(spec):
    spec = dict(spec)
    cls = getattr(x_transformers, spec.pop("class"))
    return cls(**{k: build(v) if isinstance(v, dict) and "class" in v else v for k, v in spec.items()})

model = build(json.load(open(job["config"])))
model.load_state_dict(torch.load(job["pt"], weights_only=True), strict=True)
model.eval()
kwargs = torch.load(job["inputs"], weights_only=True)
with torch.no_grad():
    out = model(kwargs.pop("x"), **kwargs)
torch.save(out[0] if isinstance(out, tuple) else out, job["output"])
print(json.dumps({"module": x_transformers.__file__}))
"""


def invoke(*args):
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result


def fresh_model(folder: Path) -> tuple[Path, dict, torch.Tensor]:
    """A model made and saved by the installed xtf, with its own outputs as the reference."""
    torch.manual_seed(0)
    model = xtf_core.TransformerWrapper(
        num_tokens=64, max_seq_len=32, attn_layers=xtf_core.Decoder(dim=32, depth=2, heads=4)
    ).eval()
    path = folder / "model.safetensors"
    xtf_core.save(model, path)
    inputs = {"x": torch.randint(0, 64, (2, 16))}
    with torch.no_grad():
        reference = model(inputs["x"])
    return path, inputs, reference


def fixture_model(folder: Path, fixture: Fixture) -> tuple[Path, dict, torch.Tensor]:
    """A checkpoint trained in a real release, brought to the current xtf; the release's outputs as reference."""
    stamped = folder / "legacy.safetensors"
    xtransformers.convert(fixture.pt, stamped, release=fixture.release, config=fixture.config)
    path = folder / "model.safetensors"
    migrate_file(stamped, path)
    return path, fixture.inputs(), fixture.io[fixture.meta["output"]]


@pytest.mark.parametrize("release, source", [("1.26.0", "fresh"), ("1.31.0", "dec_rotary")])
def test_pinned_release_loads_the_migrated_checkpoint_with_the_same_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, release: str, source: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XTF_LOCK", raising=False)
    if source == "fresh":
        path, inputs, reference = fresh_model(tmp_path)
    else:
        path, inputs, reference = fixture_model(tmp_path, Fixture(release, source))
    assert read_checkpoint_headers(path).metadata["xtf.version"] == xtf_core.__version__

    invoke("lock", path.name)
    invoke("lock", "--check")
    invoke("lock", "--pin", f"x-transformers=={release}")
    invoke("migrate", path.name, "--to-lock", "--in-place")
    metadata = read_checkpoint_headers(path).metadata
    assert (metadata["xtf.lineage"], metadata["xtf.version"]) == ("x-transformers", release)
    invoke("lock", "--check")

    exported = tmp_path / "export.pt"
    invoke("convert", path.name, "--to", f"x-transformers=={release}", "-o", exported.name)
    torch.save(inputs, tmp_path / "inputs.pt")
    job = {
        "config": str(tmp_path / "export.pt.config.json"),
        "pt": str(exported),
        "inputs": str(tmp_path / "inputs.pt"),
        "output": str(tmp_path / "output.pt"),
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    result = run_in_release(release, RUNNER, str(tmp_path / "job.json"))
    module = json.loads(result.stdout.strip().splitlines()[-1])["module"]
    assert Path(module).resolve().is_relative_to(release_dir(release).resolve())  # the real release ran
    output = torch.load(tmp_path / "output.pt", weights_only=True)
    assert output.shape == reference.shape
    assert (output - reference).abs().max().item() <= TOLERANCE
