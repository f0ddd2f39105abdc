"""The writer's pre-sized files and sharded indexes read back with xtf's readers and with safetensors."""

import errno
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from xtf_core.checkpoint.atomic import is_temp_leftover
from xtf_core.checkpoint.header import read_checkpoint_headers, read_header, read_index
from xtf_core.checkpoint.writer import presized_file, write_index

METADATA = {"xtf.version": "0.0.0", "note": "presized"}


def _tensors() -> dict[str, torch.Tensor]:
    """Distinct values in several dtypes and ranks, sizes chosen so offsets are not all 8-aligned."""
    return {
        "a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4) + 0.5,
        "b.bias": torch.tensor([-3, 7, 11], dtype=torch.int64),
        "c.gamma": torch.linspace(-2, 2, 5).to(torch.bfloat16),
        "d.scalar": torch.tensor(2.25, dtype=torch.float64),
        "e.empty": torch.zeros(0, 3, dtype=torch.float16),
        "f.half": torch.tensor([[1.5, -0.25, 4.0]], dtype=torch.float16),
    }


_CODES = {
    torch.float32: "F32",
    torch.int64: "I64",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.float16: "F16",
}


def _raw(tensor: torch.Tensor) -> bytes:
    return bytes(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def _entries(tensors):
    return [(name, _CODES[t.dtype], tuple(t.shape)) for name, t in sorted(tensors.items())]


def _fill(path, tensors, offsets) -> None:
    """Write every tensor at its offset, each in two pieces (as two ranks would)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for name, tensor in tensors.items():
            data = _raw(tensor)
            half = len(data) // 2
            os.pwrite(fd, data[half:], offsets[name] + half)
            os.pwrite(fd, data[:half], offsets[name])
        os.fsync(fd)
    finally:
        os.close(fd)


def test_presized_header_parses_and_offsets_match_safetensors(tmp_path):
    tensors = _tensors()
    path = tmp_path / "model.safetensors"
    offsets = presized_file(path, _entries(tensors), METADATA)
    assert set(offsets) == set(tensors)

    header = read_header(path)  # before any data is written: the file is already its final size
    assert header.metadata == METADATA
    assert header.file_size == path.stat().st_size
    assert header.file_size == header.data_start + sum(t.numel() * t.element_size() for t in tensors.values())
    for name, tensor in tensors.items():
        entry = header.tensors[name]
        assert (entry.dtype, entry.shape) == (_CODES[tensor.dtype], tuple(tensor.shape))
        assert header.file_offset(entry) == offsets[name]

    _fill(path, tensors, offsets)
    loaded = load_file(path)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
        assert torch.equal(loaded[name], tensor), name
    with safe_open(path, framework="pt") as handle:
        assert handle.metadata() == METADATA


def test_presized_refuses_an_existing_path(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        presized_file(path, _entries(_tensors()), METADATA)
    assert path.read_bytes() == b"keep me"


def test_presized_leaves_nothing_when_sizing_fails(tmp_path, monkeypatch):
    def full(fd, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "ftruncate", full)
    with pytest.raises(OSError, match="No space left"):
        presized_file(tmp_path / "model.safetensors", _entries(_tensors()), METADATA)
    assert list(tmp_path.iterdir()) == []


def test_index_reads_back_sorted_with_total_size(tmp_path):
    path = tmp_path / "model.safetensors.index.json"
    weight_map = {
        "z.weight": "model-00002-of-00002.safetensors",
        "a.weight": "model-00001-of-00002.safetensors",
    }
    write_index(path, {**METADATA, "total_size": 1}, weight_map, 4096)

    index = read_index(path)
    assert index.metadata == {**METADATA, "total_size": 4096}
    assert index.weight_map == weight_map
    document = json.loads(path.read_text())
    assert list(document["weight_map"]) == ["a.weight", "z.weight"]
    # the format xtf has always written: two-space indented JSON and a final newline
    assert path.read_text() == json.dumps(document, indent=2) + "\n"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_presized_shards_and_index_make_a_checkpoint(tmp_path):
    tensors = _tensors()
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[:3],
        "model-00002-of-00002.safetensors": names[3:],
    }
    weight_map = {}
    for shard, members in shards.items():
        part = {name: tensors[name] for name in members}
        _fill(tmp_path / shard, part, presized_file(tmp_path / shard, _entries(part), METADATA))
        weight_map.update(dict.fromkeys(members, shard))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    write_index(tmp_path / "model.safetensors.index.json", METADATA, weight_map, total)

    headers = read_checkpoint_headers(tmp_path)
    assert headers.is_sharded and headers.data_bytes == total
    assert headers.index.metadata["total_size"] == total
    for shard, members in shards.items():
        loaded = load_file(tmp_path / shard)
        assert sorted(loaded) == members
        for name in members:
            assert torch.equal(loaded[name], tensors[name])
    assert not any(is_temp_leftover(p) for p in tmp_path.iterdir())
