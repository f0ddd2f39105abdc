"""Every allowlisted class, the training wrappers included, saves, loads from the file alone (as the same
class, computing the same function), migrates down and back up, and verifies against its fingerprint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import xtf_core
from xtf_core.chain.stream import migrate_file
from xtf_core.errors import SpecError
from xtf_core.fingerprint import compute_fingerprint
from xtf_core.spec import ALLOWED_CLASSES
from xtf_core.verification import verify_checkpoint

torch.set_num_threads(1)


def _layers(cls: str = "Encoder", **kw: Any) -> dict[str, Any]:
    return {"class": cls, "dim": 16, "depth": 1, "heads": 2, "attn_dim_head": 8, **kw}


def _tw(cls: str = "Encoder", **kw: Any) -> dict[str, Any]:
    return {
        "class": "TransformerWrapper",
        "num_tokens": 20,
        "max_seq_len": 8,
        "attn_layers": _layers(cls),
        **kw,
    }


_CTW = {"class": "ContinuousTransformerWrapper", "dim_in": 4, "dim_out": 3, "max_seq_len": 8}

SPECS: dict[str, dict[str, Any]] = {
    "Encoder": _layers(),
    "Decoder": _layers("Decoder"),
    "CrossAttender": _layers("CrossAttender"),
    "AttentionLayers": _layers("AttentionLayers", causal=True),
    "TransformerWrapper": _tw(),
    "ContinuousTransformerWrapper": {**_CTW, "attn_layers": _layers("Decoder")},
    "XTransformer": {
        "class": "XTransformer",
        "dim": 16,
        **{
            f"{side}_{k}": v
            for side in ("enc", "dec")
            for k, v in (
                ("num_tokens", 20),
                ("max_seq_len", 8),
                ("depth", 1),
                ("heads", 2),
                ("attn_dim_head", 8),
            )
        },
        "cross_attn_tokens_dropout": 0.25,
    },
    "ViTransformerWrapper": {
        "class": "ViTransformerWrapper",
        "image_size": 8,
        "patch_size": 4,
        "num_classes": 3,
        "num_register_tokens": 1,
        "attn_layers": _layers(),
    },
    "AutoregressiveWrapper": {
        "class": "AutoregressiveWrapper",
        "net": _tw("Decoder"),
        "mask_prob": 0.15,
        "add_attn_z_loss": True,
        "next_embed_loss_weight": 0.2,
        "ignore_index": 0,
        "pad_value": 1,
    },
    "XLAutoregressiveWrapper": {
        "class": "XLAutoregressiveWrapper",
        "net": _tw("Decoder", max_mem_len=8),
        "tbptt_steps": 2,
    },
    "NonAutoregressiveWrapper": {
        "class": "NonAutoregressiveWrapper",
        "net": _tw(),
        "mask_id": 19,
        "self_cond": True,
        "self_token_critic": True,
        "schedule": "cosine",
    },
    "ContinuousAutoregressiveWrapper": {
        "class": "ContinuousAutoregressiveWrapper",
        "net": {**_CTW, "probabilistic": True, "attn_layers": _layers("Decoder")},
        "equal_loss_weight_batch": True,
    },
    # the wrapper options of this release
    "l2norm_embed": _tw(l2norm_embed=True),
    "use_cls_token": _tw(use_cls_token=True, num_cls_tokens=2),
    "average_pool_embed": _tw(average_pool_embed=True),
    "num_output_heads": _tw(num_output_heads=2),
    "squeeze_out_last_dim": _tw(logits_dim=1, squeeze_out_last_dim=True),
    "memory_tokens_interspersed_every": _tw(
        "Decoder", num_memory_tokens=1, memory_tokens_interspersed_every=3
    ),
    "embed_num_tokens+shift_mem_down": _tw("Decoder", max_mem_len=4, shift_mem_down=1),
    "emb_frac_gradient+attn_z_loss_weight": _tw(emb_frac_gradient=0.5, attn_z_loss_weight=0.01),
    "attn_pool": _tw(attn_pool=True, num_pooled_tokens=2, attn_pool_depth=2),
    "mixture_of_softmax": _tw("Decoder", mixture_of_softmax=True, sigsoftmax_logits=False),
    "add_continuous_pred_head": _tw("Decoder", add_continuous_pred_head=True),
    "probabilistic": {**_CTW, "probabilistic": True, "attn_layers": _layers()},
}


def test_every_allowlisted_class_is_covered() -> None:
    assert set(ALLOWED_CLASSES) <= set(SPECS)


def _fingerprint_output(model: torch.nn.Module) -> list[float]:
    return compute_fingerprint(model)["samples"]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_save_load_migrate_verify(name: str, tmp_path: Path) -> None:
    spec = SPECS[name]
    torch.manual_seed(0)
    model = xtf_core.build(spec)
    assert xtf_core.spec_of(model) == spec
    path = xtf_core.save(model, tmp_path / "model.safetensors")
    loaded = xtf_core.load(path)
    assert type(loaded) is type(model)
    assert xtf_core.spec_of(loaded) == spec
    assert torch.allclose(
        torch.tensor(_fingerprint_output(loaded)), torch.tensor(_fingerprint_output(model)), atol=1e-6
    )
    assert verify_checkpoint(path).checked == "fingerprint"

    down, up = tmp_path / "down.safetensors", tmp_path / "up.safetensors"
    migrate_file(path, down, target="x-transformers==2.26.0")
    assert type(xtf_core.load(down)) is type(model)
    assert verify_checkpoint(down).checked == "fingerprint"
    migrate_file(down, up)
    assert xtf_core.spec_of(xtf_core.load(up)) == spec
    assert verify_checkpoint(up).checked == "fingerprint"


def test_wrapping_a_foreign_model_is_refused() -> None:
    net = torch.nn.Linear(2, 2)
    net.max_seq_len = 4  # type: ignore[assignment]
    with pytest.raises(SpecError, match="not an xtf core class"):
        xtf_core.AutoregressiveWrapper(net)
