"""Bare Encoder / Decoder state dicts from before x-transformers 1.15.0 (no final norm) convert exactly.

The real release builds the stack, perturbs its weights and runs it on embeddings; the dict converts, loads
and computes the release's output; it migrates to the installed xtf and back, and the release loads the
export with strict=True and computes the same output again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from xt_releases import run_in_release

import xtf_core
from xtf_converters import xtransformers
from xtf_core.chain import migrate_file
from xtf_core.errors import MigrationError

TOLERANCE = 1e-4

BUILD = r"""
import json, sys, torch
import x_transformers as xt
spec, out = json.loads(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
kwargs = {k: v for k, v in spec.items() if k != "class"}
model = getattr(xt, spec["class"])(**kwargs).eval()
gen = torch.Generator().manual_seed(1)
with torch.no_grad():
    for t in model.state_dict().values():
        if t.is_floating_point():
            t.add_(torch.randn(t.shape, generator=gen) * 0.1)
x = torch.randn(2, 6, spec["dim"], generator=gen)
mask = torch.ones(2, 6, dtype=torch.bool)
mask[1, 4:] = False
with torch.no_grad():
    y = model(x, mask=mask)
torch.save({"state": model.state_dict(), "x": x, "mask": mask, "y": y}, out)
"""

RUN_EXPORT = r"""
import json, sys, torch
import x_transformers as xt
spec, state_path, io_path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
kwargs = {k: v for k, v in spec.items() if k != "class"}
model = getattr(xt, spec["class"])(**kwargs).eval()
model.load_state_dict(torch.load(state_path, weights_only=True), strict=True)
io = torch.load(io_path, weights_only=True)
with torch.no_grad():
    y = model(io["x"], mask=io["mask"])
print(json.dumps(float((y - io["y"])[io["mask"]].abs().max())))
"""

STACKS = {
    "enc_prenorm": {"class": "Encoder", "dim": 8, "depth": 2, "heads": 2, "attn_dim_head": 4},
    "enc_postnorm": {
        "class": "Encoder",
        "dim": 8,
        "depth": 2,
        "heads": 2,
        "attn_dim_head": 4,
        "pre_norm": False,
    },
    "dec_prenorm": {"class": "Decoder", "dim": 8, "depth": 1, "heads": 2, "attn_dim_head": 4},
}
RELEASES = ("0.33.1", "1.14.0")


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("name", sorted(STACKS))
def test_bare_stack_from_before_1_15_converts_and_exports_exactly(
    tmp_path: Path, release: str, name: str
) -> None:
    spec = STACKS[name]
    io_path = tmp_path / "io.pt"
    run_in_release(release, BUILD, json.dumps(spec), str(io_path))
    io = torch.load(io_path, weights_only=True)
    assert not any("final_norm" in key for key in io["state"]), "the release has no final norm"
    source = tmp_path / "state.pt"
    torch.save(io["state"], source)

    stamped = tmp_path / "stamped.safetensors"
    xtransformers.convert(source, stamped, release=release, config=spec)
    current = tmp_path / "current.safetensors"
    migrate_file(stamped, current)
    model = xtf_core.load(current)
    assert model.spec()["xtf_no_final_norm"] is True
    with torch.no_grad():
        out = model(io["x"], mask=io["mask"])
    assert float((out - io["y"])[io["mask"]].abs().max()) <= TOLERANCE

    exported = tmp_path / "export.pt"
    xtransformers.export(current, exported, release=release)
    done = run_in_release(release, RUN_EXPORT, json.dumps(spec), str(exported), str(io_path))
    assert json.loads(done.stdout.strip().splitlines()[-1]) <= TOLERANCE


def test_a_bare_stack_with_a_final_norm_cannot_go_below_1_15(tmp_path: Path) -> None:
    model = xtf_core.build(STACKS["enc_prenorm"])
    path = tmp_path / "now.safetensors"
    xtf_core.save(model, path)
    with pytest.raises(MigrationError, match="before x-transformers 1.15.0 ends without a final norm"):
        xtransformers.export(path, tmp_path / "old.pt", release="1.14.0")
