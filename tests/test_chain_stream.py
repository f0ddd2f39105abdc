"""Streaming file rewrites: raw byte copies, decoded transforms, shards, in-place backups, dry runs, refusals."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from xtf_core.chain import (
    Chain,
    Drop,
    Rename,
    Split,
    Step,
    Transpose,
    ValueTransform,
    migrate_file,
    migrate_in_memory,
)
from xtf_core.checkpoint.header import read_header
from xtf_core.checkpoint.stamp import Stamp, canonical_json, stamped_metadata
from xtf_core.errors import IrreversibleStepError, MigrationError
from xtf_core.testing import raw_tensor_bytes, write_checkpoint

SPEC = {
    "class": "TransformerWrapper",
    "num_tokens": 16,
    "attn_layers": {"class": "Decoder", "dim": 4, "depth": 2},
}


def tensors():
    generator = torch.Generator().manual_seed(0)
    return {
        "token_emb.weight": torch.randn(16, 4, generator=generator).to(torch.bfloat16),
        "layers.0.to_out.weight": torch.randn(4, 4, generator=generator),
        "layers.1.to_out.weight": torch.randn(4, 4, generator=generator).to(torch.float16),
        "layers.0.qkv.weight": torch.randn(12, 4, generator=generator).to(torch.bfloat16),
        "layers.0.norm.gamma": torch.randn(4, generator=generator).to(torch.float16),
        "layers.0.unused": torch.zeros(3),
        "steps": torch.arange(5),
    }


def with_dim(spec, dim):
    return {**spec, "attn_layers": {**spec["attn_layers"], "dim": dim}}


RENAME = Step(
    "xtf==0.1.0",
    "xtf==0.0.1",
    "Rename to_out to out_proj.",
    ops=[Rename("layers.*.to_out.weight", "layers.*.out_proj.weight")],
    upgrade_spec=lambda spec: with_dim(spec, 5),
    downgrade_spec=lambda spec: with_dim(spec, 4),
)
RESTRUCTURE = Step(
    "xtf==0.2.0",
    "xtf==0.1.0",
    "Split qkv, transpose emb, negate gains, drop the unused buffer.",
    ops=lambda spec: [
        Split("layers.*.qkv.weight", ("layers.*.q.weight", "layers.*.k.weight", "layers.*.v.weight")),
        Transpose("token_emb.weight"),
        ValueTransform("layers.*.norm.gamma", lambda t: -t, lambda t: -t),
        Drop("layers.0.unused", shape=(3,), dtype="F32"),
    ],
)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "model.safetensors"
    write_checkpoint(path, tensors(), "xtf==0.0.1", SPEC, {"xtf.fingerprint": '{"sha":"abc"}'})
    return path


def test_rename_copies_raw_bytes_and_restamps(tmp_path, source):
    out = tmp_path / "out.safetensors"
    plan = migrate_file(source, out, chain=Chain([RENAME], installed="0.1.0"))
    assert plan.counts() == {"kept": 5, "renamed": 2}
    assert plan.bytes_by_copy() == {"raw": read_header(source).data_bytes}
    for name in tensors():
        new_name = name.replace("to_out", "out_proj")
        assert raw_tensor_bytes(out, new_name) == raw_tensor_bytes(source, name)
    with safe_open(str(out), "pt") as handle:
        metadata = handle.metadata()
        assert sorted(handle.keys()) == sorted(n.replace("to_out", "out_proj") for n in tensors())
    assert metadata["xtf.version"] == "0.1.0" and metadata["xtf.lineage"] == "xtf"
    assert json.loads(metadata["xtf.spec"]) == with_dim(SPEC, 5)
    assert metadata["xtf.spec"] == canonical_json(with_dim(SPEC, 5))
    assert json.loads(metadata["xtf.migrations"]) == [
        {"id": "xtf==0.1.0", "from": "xtf==0.0.1", "to": "xtf==0.1.0", "direction": "upgrade"}
    ]
    assert json.loads(metadata["xtf.origin"]) == {"lineage": "xtf", "version": "0.0.1"}
    assert metadata["xtf.fingerprint"] == '{"sha":"abc"}'


def test_structural_step_decodes_only_what_it_touches_and_round_trips(tmp_path, source):
    chain = Chain([RENAME, RESTRUCTURE], installed="0.2.0")
    up, down = tmp_path / "up.safetensors", tmp_path / "down.safetensors"
    plan = migrate_file(source, up, chain=chain)
    by_name = {action.name: action for action in plan.actions}
    assert by_name["layers.0.k.weight"].copy == "raw"  # a dim-0 slice is a byte range
    assert by_name["token_emb.weight"].copy == "decode"
    assert by_name["layers.0.unused"].action == "dropped"
    assert by_name["steps"].action == "kept"
    original, upgraded = tensors(), load_file(str(up))
    assert torch.equal(upgraded["layers.0.k.weight"], original["layers.0.qkv.weight"][4:8])
    assert torch.equal(upgraded["token_emb.weight"], original["token_emb.weight"].T)
    assert torch.equal(upgraded["layers.0.norm.gamma"], -original["layers.0.norm.gamma"])
    assert "layers.0.unused" not in upgraded
    migrate_file(up, down, target="0.0.1", chain=chain)
    restored = load_file(str(down))
    assert set(restored) == set(original)
    for name, tensor in original.items():
        assert restored[name].dtype == tensor.dtype and torch.equal(restored[name], tensor), name
    with safe_open(str(down), "pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["xtf.spec"]) == SPEC
    assert [r["direction"] for r in json.loads(metadata["xtf.migrations"])] == ["upgrade"] * 2 + [
        "downgrade"
    ] * 2


def make_sharded(tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    all_tensors = tensors()
    names = list(all_tensors)
    metadata = stamped_metadata({}, Stamp("xtf", "0.0.1"), SPEC)
    shards = {"model-00001-of-00002.safetensors": names[:3], "model-00002-of-00002.safetensors": names[3:]}
    for shard, members in shards.items():
        save_file({name: all_tensors[name] for name in members}, str(folder / shard), metadata)
    index = {
        "metadata": {**metadata, "total_size": 1},
        "weight_map": {n: s for s, ms in shards.items() for n in ms},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text("{}")
    return folder, shards, all_tensors


def test_sharded_folder_is_migrated_shard_by_shard_with_new_index(tmp_path):
    folder, shards, all_tensors = make_sharded(tmp_path)
    out = tmp_path / "migrated"
    migrate_file(folder, out, chain=Chain([RENAME], installed="0.1.0"))
    new_index = json.loads((out / "model.safetensors.index.json").read_text())
    assert new_index["weight_map"]["layers.1.out_proj.weight"] == "model-00001-of-00002.safetensors"
    assert "layers.1.to_out.weight" not in new_index["weight_map"]
    assert new_index["metadata"]["xtf.version"] == "0.1.0"
    assert new_index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in all_tensors.values()
    )
    for shard in shards:
        with safe_open(str(out / shard), "pt") as handle:
            assert handle.metadata()["xtf.version"] == "0.1.0"
            assert set(handle.keys()) == {n for n, s in new_index["weight_map"].items() if s == shard}
    assert (out / "config.json").read_text() == "{}"


def test_in_place_keeps_a_backup_first_and_refuses_to_overwrite_it(tmp_path, source):
    chain = Chain([RENAME], installed="0.1.0")
    original = source.read_bytes()
    migrate_file(source, in_place=True, chain=chain)
    backup = tmp_path / "model.safetensors.bak"
    assert backup.read_bytes() == original
    assert read_header(source).metadata["xtf.version"] == "0.1.0"
    migrated = source.read_bytes()
    with pytest.raises(MigrationError, match="backup .*model.safetensors.bak already exists"):
        migrate_file(source, in_place=True, target="0.1.0", chain=chain)
    assert source.read_bytes() == migrated and backup.read_bytes() == original


def test_dry_run_writes_nothing(tmp_path, source):
    before = sorted(p.name for p in tmp_path.iterdir())
    plan = migrate_file(
        source, tmp_path / "out.safetensors", dry_run=True, chain=Chain([RENAME], installed="0.1.0")
    )
    migrate_file(source, in_place=True, dry_run=True, chain=Chain([RENAME], installed="0.1.0"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert any("renamed" in line for line in plan.describe())


def test_refusals_leave_no_output(tmp_path, source):
    out = tmp_path / "out.safetensors"
    nonzero = Step("xtf==0.1.0", "xtf==0.0.1", "Drop steps.", ops=[Drop("steps")])
    with pytest.raises(MigrationError, match="'steps' \\(max abs value 4"):
        migrate_file(source, out, chain=Chain([nonzero], installed="0.1.0"))
    lossy = Step("xtf==0.1.0", "xtf==0.0.1", "Lossy.", ops=[ValueTransform("steps", lambda t: t * 0)])
    newer = tmp_path / "newer.safetensors"
    write_checkpoint(newer, tensors(), "xtf==0.1.0", SPEC)
    with pytest.raises(IrreversibleStepError, match="backward"):
        migrate_file(newer, out, target="0.0.1", chain=Chain([lossy], installed="0.1.0"))
    existing = tmp_path / "exists.safetensors"
    existing.write_bytes(b"x")
    with pytest.raises(MigrationError, match="already exists"):
        migrate_file(source, existing, chain=Chain([RENAME], installed="0.1.0"))
    assert existing.read_bytes() == b"x"
    with pytest.raises(MigrationError, match="does not exist; create it first"):
        migrate_file(source, tmp_path / "no" / "out.safetensors", chain=Chain([RENAME], installed="0.1.0"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "exists.safetensors",
        "model.safetensors",
        "newer.safetensors",
    ]


def test_in_memory_migration_matches_file_migration(tmp_path, source):
    chain = Chain([RENAME, RESTRUCTURE], installed="0.2.0")
    original = tensors()
    migrated, spec, records = migrate_in_memory(original, SPEC, "xtf==0.0.1", chain=chain)
    migrate_file(source, tmp_path / "up.safetensors", chain=chain)
    from_file = load_file(str(tmp_path / "up.safetensors"))
    assert list(migrated) == list(from_file) or set(migrated) == set(from_file)
    for name, tensor in from_file.items():
        assert torch.equal(migrated[name], tensor), name
    assert migrated["steps"] is original["steps"]
    assert spec == with_dim(SPEC, 5) and [r["to"] for r in records] == ["xtf==0.1.0", "xtf==0.2.0"]
    assert set(original) == set(tensors())  # inputs untouched


def test_elementwise_transform_streams_in_chunks(tmp_path, source, monkeypatch):
    from xtf_core.chain import stream

    monkeypatch.setattr(stream, "ELEMENTWISE_CHUNK_BYTES", 6)
    calls = []

    def negate(tensor):
        calls.append(tensor.numel())
        return -tensor

    step = Step(
        "xtf==0.1.0", "xtf==0.0.1", "Negate.", ops=[ValueTransform("layers.0.qkv.weight", negate, negate)]
    )
    out = tmp_path / "out.safetensors"
    migrate_file(source, out, chain=Chain([step], installed="0.1.0"))
    assert torch.equal(load_file(str(out))["layers.0.qkv.weight"], -tensors()["layers.0.qkv.weight"])
    assert calls == [3] * 16  # 48 bf16 elements, 3 per 6-byte chunk


def test_sharded_in_place_keeps_folder_backup(tmp_path):
    folder, shards, _ = make_sharded(tmp_path)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    migrate_file(
        folder / "model.safetensors.index.json", in_place=True, chain=Chain([RENAME], installed="0.1.0")
    )
    backup = tmp_path / "sharded.bak"
    assert {path.name: path.read_bytes() for path in backup.iterdir()} == before
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert "layers.0.out_proj.weight" in index["weight_map"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sharded", "sharded.bak"]
    with pytest.raises(MigrationError, match="sharded.bak already exists"):
        migrate_file(folder, in_place=True, chain=Chain([RENAME], installed="0.1.0"))
