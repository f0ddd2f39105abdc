"""The stdlib header reader: accepts what safetensors writes, rejects every malformed header it must."""

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from xtf_core.checkpoint.header import (
    encode_header,
    read_checkpoint_headers,
    read_header,
    read_index,
)
from xtf_core.errors import CheckpointFormatError


def write_raw(path, document, data: bytes) -> None:
    raw = json.dumps(document).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_reads_what_safetensors_writes(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(
        {"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.bfloat16), "c": torch.arange(5)},
        str(path),
        {"k": "v"},
    )
    header = read_header(path)
    assert header.metadata == {"k": "v"}
    assert {name: (e.dtype, e.shape) for name, e in header.tensors.items()} == {
        "a": ("F32", (2, 3)),
        "b": ("BF16", (4,)),
        "c": ("I64", (5,)),
    }
    assert header.data_bytes == 24 + 8 + 40
    assert header.data_start + header.data_bytes == header.file_size
    offsets = [(e.begin, e.end) for e in header.tensors.values()]
    assert offsets == sorted(offsets)


def test_rejects_header_size_larger_than_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(CheckpointFormatError, match="larger than the file"):
        read_header(path)


def test_rejects_tiny_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"abc")
    with pytest.raises(CheckpointFormatError, match="too short"):
        read_header(path)


@pytest.mark.parametrize(
    ("entries", "data", "message"),
    [
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            12,
            "overlaps",
        ),
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 8, "run past"),
        ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, 8, "unknown dtype"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8, "needs 12"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8, "non-negative"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, 8, "begin <= end"),
        ({"__metadata__": {"k": 1}}, 0, "strings to strings"),
    ],
)
def test_rejects_bad_entries(tmp_path, entries, data, message):
    path = tmp_path / "bad.safetensors"
    write_raw(path, entries, b"\0" * data)
    with pytest.raises(CheckpointFormatError, match=message) as info:
        read_header(path)
    assert str(path) in str(info.value)


def test_rejects_non_json_header(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"nope")
    with pytest.raises(CheckpointFormatError, match="JSON"):
        read_header(path)


def test_encoded_header_is_aligned_and_loads_with_safetensors(tmp_path):
    tensors = {"x.weight": torch.arange(6, dtype=torch.float16).reshape(2, 3), "y": torch.tensor([1, 2, 3])}
    head = encode_header(
        [
            (n, {torch.float16: "F16", torch.int64: "I64"}[t.dtype], tuple(t.shape))
            for n, t in tensors.items()
        ],
        {"a": "b"},
    )
    assert len(head) % 8 == 0
    path = tmp_path / "m.safetensors"
    path.write_bytes(head + b"".join(t.numpy().tobytes() for t in tensors.values()))
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"a": "b"}
        for name, tensor in tensors.items():
            assert torch.equal(handle.get_tensor(name), tensor)


def test_sharded_index_is_checked_against_shards(tmp_path):
    save_file({"a": torch.zeros(2)}, str(tmp_path / "s1.safetensors"))
    save_file({"b": torch.zeros(2)}, str(tmp_path / "s2.safetensors"))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(
        json.dumps(
            {"metadata": {"total_size": 16}, "weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}
        )
    )
    headers = read_checkpoint_headers(tmp_path)
    assert headers.is_sharded and headers.tensor_count == 2
    assert [(shard, e.name) for shard, e in headers.entries()] == [
        ("s1.safetensors", "a"),
        ("s2.safetensors", "b"),
    ]
    index.write_text(
        json.dumps({"metadata": {}, "weight_map": {"a": "s2.safetensors", "b": "s2.safetensors"}})
    )
    with pytest.raises(CheckpointFormatError, match="disagrees"):
        read_checkpoint_headers(index)


def test_index_rejects_paths_outside_its_folder(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "../evil.safetensors"}}))
    with pytest.raises(CheckpointFormatError, match="file name"):
        read_index(index)


def test_folder_without_checkpoint_is_rejected(tmp_path):
    with pytest.raises(CheckpointFormatError, match="neither"):
        read_checkpoint_headers(tmp_path)
