"""`embed_num_tokens` (extra token embeddings read from `embed_ids`): saved, loaded, verified and converted."""

from __future__ import annotations

from pathlib import Path

import torch
from parity_configs import assert_close, paired

import xtf_core
from xtf_converters import xtransformers
from xtf_core.verification import verify_checkpoint

SPEC = {
    "class": "TransformerWrapper",
    "num_tokens": 16,
    "max_seq_len": 8,
    "embed_num_tokens": {"type": 4, "speaker": 3},
    "attn_layers": {"class": "Decoder", "dim": 8, "depth": 1, "heads": 2, "attn_dim_head": 4},
}


def _inputs() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 16, (2, 6), generator=gen)
    ids = {
        "type": torch.randint(0, 4, (2, 6), generator=gen),
        "speaker": torch.randint(0, 3, (2, 6), generator=gen),
    }
    return tokens, ids


def test_saves_loads_and_verifies(tmp_path: Path) -> None:
    model = xtf_core.build(SPEC).eval()
    path = tmp_path / "m.safetensors"
    xtf_core.save(model, path)
    assert verify_checkpoint(path).checked == "fingerprint"
    tokens, ids = _inputs()
    with torch.no_grad():
        assert torch.equal(xtf_core.load(path)(tokens, embed_ids=ids), model(tokens, embed_ids=ids))


def test_a_2_31_10_state_dict_converts_with_its_outputs(tmp_path: Path) -> None:
    ref, _ = paired(SPEC)
    source = tmp_path / "state.pt"
    torch.save(ref.state_dict(), source)
    out = tmp_path / "converted.safetensors"
    xtransformers.convert(source, out, release="2.31.10", config=SPEC)
    tokens, ids = _inputs()
    with torch.no_grad():
        assert_close(ref(tokens, embed_ids=ids), xtf_core.load(out)(tokens, embed_ids=ids))
