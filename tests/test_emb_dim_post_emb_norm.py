"""A narrow embedding (`emb_dim`) with `post_emb_norm`: its LayerNorm is emb_dim wide in every era.

Each release builds the model and runs it; the dict converts, computes the release's output, migrates to
the installed xtf and back, and the release loads the export (strict=True) and computes it again. 1.27.0
stores a zero `beta` buffer beside `gamma`, whose width is the norm's, not the model's.
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

SPEC = {
    "class": "TransformerWrapper",
    "num_tokens": 16,
    "max_seq_len": 8,
    "emb_dim": 4,
    "post_emb_norm": True,
    "attn_layers": {"class": "Decoder", "dim": 8, "depth": 1, "heads": 2, "attn_dim_head": 4},
}

BUILD = r"""
import json, sys, torch
import x_transformers as xt
spec, out = json.loads(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
layers = spec["attn_layers"]
kwargs = {k: v for k, v in spec.items() if k not in ("class", "attn_layers")}
stack = getattr(xt, layers["class"])(**{k: v for k, v in layers.items() if k != "class"})
model = xt.TransformerWrapper(attn_layers=stack, **kwargs).eval()
gen = torch.Generator().manual_seed(1)
with torch.no_grad():
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not name.endswith("beta"):  # beta is a zero buffer in 1.27.0
            t.add_(torch.randn(t.shape, generator=gen) * 0.1)
x = torch.randint(0, spec["num_tokens"], (2, 6), generator=gen)
with torch.no_grad():
    y = model(x)
torch.save({"state": model.state_dict(), "x": x, "y": y}, out)
"""

RUN_EXPORT = r"""
import json, sys, torch
import x_transformers as xt
spec, state_path, io_path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
layers = spec["attn_layers"]
kwargs = {k: v for k, v in spec.items() if k not in ("class", "attn_layers")}
stack = getattr(xt, layers["class"])(**{k: v for k, v in layers.items() if k != "class"})
model = xt.TransformerWrapper(attn_layers=stack, **kwargs).eval()
model.load_state_dict(torch.load(state_path, weights_only=True), strict=True)
io = torch.load(io_path, weights_only=True)
with torch.no_grad():
    print(json.dumps(float((model(io["x"]) - io["y"]).abs().max())))
"""


@pytest.mark.parametrize("release", ["1.26.6", "1.27.0", "1.27.1", "1.30.0"])
def test_emb_dim_with_post_emb_norm_converts_and_exports(tmp_path: Path, release: str) -> None:
    io_path = tmp_path / "io.pt"
    run_in_release(release, BUILD, json.dumps(SPEC), str(io_path))
    io = torch.load(io_path, weights_only=True)
    source = tmp_path / "state.pt"
    torch.save(io["state"], source)
    stamped, current = tmp_path / "stamped.safetensors", tmp_path / "current.safetensors"
    xtransformers.convert(source, stamped, release=release, config=SPEC)
    migrate_file(stamped, current)
    with torch.no_grad():
        out = xtf_core.load(current)(io["x"])
    assert float((out - io["y"]).abs().max()) <= 1e-4

    exported = tmp_path / "export.pt"
    xtransformers.export(current, exported, release=release)
    done = run_in_release(release, RUN_EXPORT, json.dumps(SPEC), str(exported), str(io_path))
    assert json.loads(done.stdout.strip().splitlines()[-1]) <= 1e-4
