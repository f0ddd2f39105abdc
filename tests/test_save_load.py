"""save -> load round trips, the stamp in the metadata, and what load refuses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import xtf_core
from xtf_core.errors import (
    CheckpointFormatError,
    SpecError,
    StateDictMismatchError,
    VerificationError,
    VersionError,
)
from xtf_core.verification import verify_checkpoint

DEC = {"class": "Decoder", "dim": 16, "depth": 2, "heads": 2}
ENC = {"class": "Encoder", "dim": 16, "depth": 2, "heads": 2}


def tw(layers: dict, **kwargs) -> dict:
    return {
        "class": "TransformerWrapper",
        "num_tokens": 24,
        "max_seq_len": 12,
        "attn_layers": layers,
        **kwargs,
    }


FAMILIES = {
    "plain": tw(DEC),
    "heads_dim_head": tw({**DEC, "heads": 4, "attn_dim_head": 8}),
    "ff_variants": tw({**DEC, "ff_mult": 2, "ff_glu": True, "ff_swish": True, "ff_no_bias": True}),
    "ff_relu_squared": tw({**DEC, "ff_relu_squared": True}),
    "post_norm": tw({**ENC, "pre_norm": False}),
    "rmsnorm_sandwich": tw({**DEC, "use_rmsnorm": True, "sandwich_norm": True}),
    "scalenorm": tw({**DEC, "use_scalenorm": True}),
    "simple_rmsnorm_resattn": tw({**ENC, "use_simple_rmsnorm": True, "residual_attn": True}),
    "cross": tw({**DEC, "cross_attend": True}),
    "custom_layers": tw({**DEC, "depth": None, "custom_layers": ["a", "f", "f", "a", "f"]}),
    "par_ratio": tw({**DEC, "depth": 3, "par_ratio": 2}),
    "rotary_xpos": tw({**DEC, "rotary_pos_emb": True, "rotary_emb_dim": 4, "rotary_xpos": True}),
    "alibi": tw({**DEC, "heads": 4, "alibi_pos_bias": True, "alibi_num_heads": 2}),
    "rel_pos": tw({**ENC, "rel_pos_bias": True}),
    "no_abs_pos": tw(DEC, use_abs_pos_emb=False),
    "memory_tied_embdim": tw(DEC, num_memory_tokens=2, tie_embedding=True, post_emb_norm=True),
    "emb_dim": tw(DEC, emb_dim=8, emb_dropout=0.1),
    "gqa_qknorm_gate": tw(
        {**DEC, "heads": 4, "attn_kv_heads": 2, "attn_qk_norm": True, "attn_gate_values": True}
    ),
    "flash": tw({**DEC, "attn_flash": True}),
    "xl_memory": tw(DEC, max_mem_len=4),
    "continuous": {
        "class": "ContinuousTransformerWrapper",
        "dim_in": 5,
        "dim_out": 3,
        "max_seq_len": 12,
        "num_memory_tokens": 1,
        "attn_layers": ENC,
    },
    "xtransformer": {
        "class": "XTransformer",
        "dim": 16,
        "tie_token_emb": True,
        "enc_num_tokens": 20,
        "enc_max_seq_len": 10,
        "enc_depth": 1,
        "enc_heads": 2,
        "dec_num_tokens": 20,
        "dec_max_seq_len": 10,
        "dec_depth": 1,
        "dec_heads": 2,
    },
    "bare_encoder": ENC,
}


def perturbed(spec: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    model = xtf_core.build(spec)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def outputs(model: torch.nn.Module, spec: dict) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    cls = spec["class"]
    if cls == "XTransformer":
        src = torch.randint(0, 20, (2, 7), generator=gen)
        tgt = torch.randint(0, 20, (2, 6), generator=gen)
        mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
        enc = model.encoder(src, mask=mask, return_embeddings=True)
        return model.decoder.net(tgt, context=enc, context_mask=mask)
    if cls == "ContinuousTransformerWrapper":
        return model(
            torch.randn(2, 6, 5, generator=gen), mask=torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
        )
    if cls == "Encoder":
        return model(torch.randn(2, 6, 16, generator=gen))
    kwargs = {}
    if spec["attn_layers"].get("cross_attend"):
        kwargs = {
            "context": torch.randn(2, 3, 16, generator=gen),
            "context_mask": torch.tensor([[1, 1, 0], [0, 0, 0]]).bool(),
        }
    return model(torch.randint(0, 24, (2, 6), generator=gen), **kwargs)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_round_trip_reproduces_outputs_exactly(tmp_path: Path, name: str) -> None:
    spec = FAMILIES[name]
    model = perturbed(spec)
    path = xtf_core.save(model, tmp_path / "model.safetensors")
    loaded = xtf_core.load(path)
    assert xtf_core.spec_of(loaded) == xtf_core.spec_of(model)
    assert not loaded.training
    torch.testing.assert_close(outputs(loaded, spec), outputs(model, spec), rtol=0, atol=0)
    assert verify_checkpoint(path).checked == "fingerprint"


def test_metadata_holds_the_stamp_and_spec(tmp_path: Path) -> None:
    spec = FAMILIES["rotary_xpos"]
    path = xtf_core.save(perturbed(spec), tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt"
    assert meta["xtf.version"] == xtf_core.__version__
    assert json.loads(meta["xtf.spec"]) == spec
    assert meta["xtf.spec"] == json.dumps(spec, sort_keys=True, separators=(",", ":"))
    fingerprint = json.loads(meta["xtf.fingerprint"])
    assert fingerprint["shape"] == [2, 8, 24] and len(fingerprint["samples"]) == 64


def test_tied_tensors_are_saved_once_and_restored_tied(tmp_path: Path) -> None:
    path = xtf_core.save(perturbed(FAMILIES["xtransformer"]), tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "decoder.net.token_emb.emb.weight" in keys and "encoder.token_emb.emb.weight" not in keys
    assert json.loads(meta["xtf.tied"]) == {
        "encoder.token_emb.emb.weight": "decoder.net.token_emb.emb.weight"
    }
    loaded = xtf_core.load(path)
    assert loaded.encoder.token_emb.emb.weight is loaded.decoder.net.token_emb.emb.weight


def test_load_does_not_run_random_initialisation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = xtf_core.save(perturbed(FAMILIES["plain"]), tmp_path / "m.safetensors")

    real_inits: list[str] = []

    def watch(name, original):
        def wrapped(tensor, *args, **kwargs):
            if not tensor.is_meta:
                real_inits.append(name)
            return original(tensor, *args, **kwargs)

        return wrapped

    for name in ("kaiming_uniform_", "uniform_", "normal_"):
        monkeypatch.setattr(torch.nn.init, name, watch(name, getattr(torch.nn.init, name)))
    monkeypatch.setattr(torch.Tensor, "normal_", watch("Tensor.normal_", torch.Tensor.normal_))
    xtf_core.load(path)
    assert real_inits == []  # initialisers only ever saw meta tensors: no compute, no memory


def _read_all(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _write_raw(path: Path, metadata: dict[str, str]) -> Path:
    save_file({"w": torch.zeros(2)}, str(path), metadata=metadata)
    return path


def test_file_without_stamp_is_rejected(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "plain.safetensors", {"format": "pt"})
    with pytest.raises(CheckpointFormatError, match="xtf.version"):
        xtf_core.load(path)


def test_file_without_spec_is_rejected(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "nospec.safetensors", {"format": "pt", "xtf.version": xtf_core.__version__})
    with pytest.raises(CheckpointFormatError, match="xtf.spec"):
        xtf_core.load(path)


def test_unknown_class_is_rejected(tmp_path: Path) -> None:
    meta = {
        "format": "pt",
        "xtf.version": xtf_core.__version__,
        "xtf.spec": json.dumps({"class": "os.system"}),
    }
    path = _write_raw(tmp_path / "evil.safetensors", meta)
    with pytest.raises(SpecError, match="unknown class 'os.system'"):
        xtf_core.load(path)


def test_newer_version_is_refused_naming_both_versions(tmp_path: Path) -> None:
    meta = {"format": "pt", "xtf.version": "99.0.0", "xtf.spec": json.dumps(FAMILIES["plain"])}
    path = _write_raw(tmp_path / "future.safetensors", meta)
    with pytest.raises(VersionError, match=r"99\.0\.0.*" + re.escape(xtf_core.__version__)):
        xtf_core.load(path)


def test_spec_that_does_not_fit_the_tensors_names_the_first_difference(tmp_path: Path) -> None:
    spec = FAMILIES["plain"]
    path = xtf_core.save(perturbed(spec), tmp_path / "m.safetensors")
    tensors, meta = _read_all(path)
    meta["xtf.spec"] = json.dumps(tw({**DEC, "dim": 32}))
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(StateDictMismatchError, match="has shape"):
        xtf_core.load(tmp_path / "bad.safetensors")


def test_verify_catches_a_changed_weight(tmp_path: Path) -> None:
    spec = FAMILIES["plain"]
    path = xtf_core.save(perturbed(spec), tmp_path / "m.safetensors")
    tensors, meta = _read_all(path)
    tensors["to_logits.weight"] = tensors["to_logits.weight"] * 1.5
    save_file(tensors, str(tmp_path / "changed.safetensors"), metadata=meta)
    with pytest.raises(VerificationError, match="no longer computes"):
        verify_checkpoint(tmp_path / "changed.safetensors")


def test_verify_without_fingerprint_checks_finite_tensors(tmp_path: Path) -> None:
    spec = FAMILIES["plain"]
    path = xtf_core.save(perturbed(spec), tmp_path / "m.safetensors", fingerprint=False)
    assert verify_checkpoint(path).checked == "finite"
    tensors, meta = _read_all(path)
    tensors["to_logits.weight"][0, 0] = float("nan")
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=meta)
    with pytest.raises(VerificationError, match="NaN"):
        verify_checkpoint(tmp_path / "nan.safetensors")


def test_loading_an_older_stamp_migrates_in_memory_and_logs_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from xtf_converters import xtransformers

    legacy = Path(__file__).parent / "fixtures" / "legacy" / "1.26.0"
    config = json.loads((legacy / "dec_plain.json").read_text())["config"]
    stamped = tmp_path / "old.safetensors"
    xtransformers.convert(legacy / "dec_plain.pt", stamped, release="1.26.0", config=config)
    with caplog.at_level("INFO", logger="xtf"):
        model = xtf_core.load(stamped)
    lines = [r.getMessage() for r in caplog.records if r.name == "xtf"]
    assert (
        len(lines) == 1
        and "x-transformers==1.26.0" in lines[0]
        and f"xtf=={xtf_core.__version__}" in lines[0]
    )
    assert xtf_core.spec_of(model)["attn_layers"]["norm_add_unit_offset"] is False


def test_save_and_load_do_not_need_numpy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch does not depend on numpy, so neither may xtf (a plain `pip install xtf` has no numpy)."""

    def no_numpy(*args, **kwargs):
        raise RuntimeError("Numpy is not available")

    monkeypatch.setattr(torch.Tensor, "numpy", no_numpy)
    spec = FAMILIES["plain"]
    model = perturbed(spec)
    loaded = xtf_core.load(xtf_core.save(model, tmp_path / "m.safetensors"))
    torch.testing.assert_close(outputs(loaded, spec), outputs(model, spec), rtol=0, atol=0)
