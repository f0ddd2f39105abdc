"""The xtf 0.2.0 step: the identity going up; going down refuses what xtf 0.1.0 could not build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import xtf_core
from xtf_core.chain import default_chain, migrate_file
from xtf_core.checkpoint.header import read_checkpoint_headers
from xtf_core.errors import MigrationError
from xtf_core.testing import round_trip

SNAPSHOTS = Path(__file__).parent / "fixtures" / "layouts"
STEP = next(step for step in default_chain().steps if step.id == "xtf==0.2.0")
PLAIN = {
    "class": "TransformerWrapper",
    "num_tokens": 16,
    "max_seq_len": 8,
    "attn_layers": {"class": "Decoder", "dim": 8, "depth": 1, "heads": 2, "rotary_pos_emb": True},
}


def test_step_0_2_0_every_config_of_the_0_1_0_snapshot_goes_down_unchanged() -> None:
    """The specs 0.1.0 pinned its layouts with are all buildable by 0.1.0: the step lets them stop there."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("canonical_layouts", SNAPSHOTS / "canonical.py")
    canonical = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(canonical)
    released = json.loads((SNAPSHOTS / "xtf-0.1.0.json").read_text())["configs"]
    for name in released:
        config = canonical.CANONICAL[name]
        assert STEP.check_stop_spec(config) is None


def test_step_0_2_0_round_trip_is_the_identity() -> None:
    tensors = {"attn_layers.layers.0.1.to_q.weight": torch.arange(8.0).reshape(2, 4)}
    up, up_spec, back, back_spec = round_trip(STEP, tensors, PLAIN)
    assert up_spec == PLAIN and back_spec == PLAIN
    assert torch.equal(
        up["attn_layers.layers.0.1.to_q.weight"], tensors["attn_layers.layers.0.1.to_q.weight"]
    )
    assert torch.equal(
        back["attn_layers.layers.0.1.to_q.weight"], tensors["attn_layers.layers.0.1.to_q.weight"]
    )


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"attn_layers": {**PLAIN["attn_layers"], "macaron": True}}, "Decoder.macaron=True"),
        ({"attn_layers": {**PLAIN["attn_layers"], "attn_num_mem_kv": 2}}, "Decoder.attn_num_mem_kv=2"),
        ({"use_cls_token": True}, "TransformerWrapper.use_cls_token=True"),
        ({"attn_layers": {**PLAIN["attn_layers"], "xtf_no_final_norm": True}}, "Decoder.xtf_no_final_norm"),
    ],
)
def test_step_0_2_0_refuses_to_take_new_options_down(change: dict, named: str) -> None:
    with pytest.raises(MigrationError, match=named.replace(".", r"\.")):
        STEP.check_stop_spec({**PLAIN, **change})


def test_step_0_2_0_new_classes_and_neutral_values(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="xtf 0.1.0 has no class 'ViTransformerWrapper'"):
        STEP.check_stop_spec({"class": "ViTransformerWrapper", "image_size": 8})
    # an option 0.1.0 accepted at its neutral value still goes down
    neutral = {**PLAIN, "attn_layers": {**PLAIN["attn_layers"], "macaron": False}}
    assert STEP.check_stop_spec(neutral) is None


def test_migrate_to_0_1_0_refuses_a_file_with_new_options_and_writes_nothing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = xtf_core.build({**PLAIN, "attn_layers": {**PLAIN["attn_layers"], "attn_num_mem_kv": 2}})
    path, out = tmp_path / "new.safetensors", tmp_path / "old.safetensors"
    xtf_core.save(model, path)
    with pytest.raises(MigrationError, match="attn_num_mem_kv"):
        migrate_file(path, out, target="xtf==0.1.0")
    assert not out.exists()
    plain = tmp_path / "plain.safetensors"
    xtf_core.save(xtf_core.build(PLAIN), plain)
    migrate_file(plain, out, target="xtf==0.1.0")
    assert read_checkpoint_headers(out).metadata["xtf.version"] == "0.1.0"
