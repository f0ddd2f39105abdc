"""`xtf verify`: a saved model checks out; a tampered one is a one-line error with exit status 1."""

import json

import torch
from click.testing import CliRunner

import xtf_core
from xtf_cli.cli import main
from xtf_core.checkpoint.header import read_header

SPEC = {
    "class": "TransformerWrapper",
    "num_tokens": 16,
    "max_seq_len": 8,
    "attn_layers": {"class": "Decoder", "dim": 16, "depth": 1, "heads": 2},
}


def test_verify_saved_model_then_tampered_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.safetensors"
    xtf_core.save(xtf_core.build(SPEC), path)
    result = CliRunner().invoke(main, ["verify", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True

    header = read_header(path)
    entry = max(header.tensors.values(), key=lambda e: e.nbytes)  # overwrite the largest weight
    assert entry.dtype == "F32"
    data = bytearray(path.read_bytes())
    start = header.file_offset(entry)
    data[start : start + entry.nbytes] = torch.full(entry.shape, 3.0).numpy().tobytes()
    path.write_bytes(bytes(data))
    tampered = CliRunner().invoke(main, ["verify", str(path)])
    assert tampered.exit_code == 1
    lines = tampered.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
