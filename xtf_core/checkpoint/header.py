"""Read, validate and encode safetensors headers and sharded index files, with the standard library only.

Nothing here imports torch or safetensors, so `xtf inspect` and migration planning stay fast: a header is
read with two small reads no matter how large the file is. Readers check sizes and offsets before trusting
anything (see docs/checkpoint-format.md).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from xtf_core.errors import CheckpointFormatError

INDEX_FILENAME = "model.safetensors.index.json"
SINGLE_FILENAME = "model.safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024
HEADER_ALIGNMENT = 8

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: dtype, shape and its byte range inside the data region."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    """A validated safetensors header. `tensors` is ordered by data offset."""

    path: Path
    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]
    data_start: int
    file_size: int

    def file_offset(self, entry: TensorEntry) -> int:
        """Absolute offset of a tensor's first byte in the file."""
        return self.data_start + entry.begin

    @property
    def data_bytes(self) -> int:
        return sum(entry.nbytes for entry in self.tensors.values())


@dataclass(frozen=True)
class ShardedIndex:
    """A `model.safetensors.index.json`: shared metadata and which shard holds each tensor."""

    path: Path
    metadata: dict[str, object]
    weight_map: dict[str, str]

    @property
    def shard_files(self) -> list[str]:
        return sorted(set(self.weight_map.values()))


@dataclass(frozen=True)
class CheckpointHeaders:
    """Every header of a checkpoint: one file, or a sharded folder with its index."""

    path: Path
    shards: dict[str, Header]
    index: ShardedIndex | None = None

    @property
    def is_sharded(self) -> bool:
        return self.index is not None

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def metadata(self) -> dict[str, str]:
        """The checkpoint's metadata: the index's string values for a sharded folder, else the file's."""
        if self.index is None:
            return next(iter(self.shards.values())).metadata
        return {key: value for key, value in self.index.metadata.items() if isinstance(value, str)}

    def entries(self) -> Iterable[tuple[str, TensorEntry]]:
        """(shard file name, entry) for every tensor, shard by shard in data order."""
        for shard_name, header in self.shards.items():
            for entry in header.tensors.values():
                yield shard_name, entry

    @property
    def tensor_count(self) -> int:
        return sum(len(header.tensors) for header in self.shards.values())

    @property
    def data_bytes(self) -> int:
        return sum(header.data_bytes for header in self.shards.values())


def read_header(path: str | os.PathLike) -> Header:
    """Read and validate the header of one safetensors file."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointFormatError(f"{path}: {file_size} bytes is too short for a safetensors file")
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > file_size - 8:
                raise CheckpointFormatError(
                    f"{path}: header size {header_size} is larger than the file ({file_size} bytes); "
                    "the file is truncated or not safetensors"
                )
            if header_size > MAX_HEADER_BYTES:
                raise CheckpointFormatError(
                    f"{path}: header size {header_size} exceeds {MAX_HEADER_BYTES} bytes"
                )
            raw = handle.read(header_size)
    except OSError as exc:
        raise CheckpointFormatError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(f"{path}: header is not valid UTF-8 JSON ({exc})") from exc
    data_start = 8 + header_size
    metadata, tensors = _parse_header_document(path, document, file_size - data_start)
    return Header(path=path, metadata=metadata, tensors=tensors, data_start=data_start, file_size=file_size)


def _parse_header_document(
    path: Path, document: object, data_size: int
) -> tuple[dict[str, str], dict[str, TensorEntry]]:
    if not isinstance(document, dict):
        raise CheckpointFormatError(f"{path}: header JSON must be an object")
    metadata = document.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()
    ):
        raise CheckpointFormatError(f"{path}: __metadata__ must map strings to strings")
    entries = [_parse_entry(path, name, raw) for name, raw in document.items() if name != "__metadata__"]
    entries.sort(key=lambda entry: (entry.begin, entry.end))
    previous_end, previous_name = 0, None
    for entry in entries:
        if entry.end > data_size:
            raise CheckpointFormatError(
                f"{path}: tensor {entry.name!r} data_offsets [{entry.begin}, {entry.end}] run past the "
                f"data region ({data_size} bytes); the file is truncated or corrupt"
            )
        if entry.begin < previous_end:
            raise CheckpointFormatError(
                f"{path}: tensor {entry.name!r} data overlaps tensor {previous_name!r}; the header is corrupt"
            )
        previous_end, previous_name = entry.end, entry.name
    return dict(metadata), {entry.name: entry for entry in entries}


def _parse_entry(path: Path, name: str, raw: object) -> TensorEntry:
    where = f"{path}: tensor {name!r}"
    if not isinstance(raw, dict):
        raise CheckpointFormatError(f"{where}: entry must be an object with dtype, shape, data_offsets")
    dtype = raw.get("dtype")
    if dtype not in DTYPE_SIZES:
        raise CheckpointFormatError(f"{where}: unknown dtype {dtype!r} (known: {', '.join(DTYPE_SIZES)})")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(dim, int) and dim >= 0 for dim in shape):
        raise CheckpointFormatError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    offsets = raw.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(value, int) and value >= 0 for value in offsets)
        or offsets[0] > offsets[1]
    ):
        raise CheckpointFormatError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise CheckpointFormatError(
            f"{where}: data_offsets span {offsets[1] - offsets[0]} bytes but {dtype}{shape} needs {expected}"
        )
    return TensorEntry(name=name, dtype=dtype, shape=tuple(shape), begin=offsets[0], end=offsets[1])


def read_index(path: str | os.PathLike) -> ShardedIndex:
    """Read and validate a sharded checkpoint's index file (the shards themselves are not opened)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckpointFormatError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(f"{path}: index is not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise CheckpointFormatError(f"{path}: index must be a JSON object with metadata and weight_map")
    metadata = document.get("metadata", {})
    weight_map = document.get("weight_map")
    if not isinstance(metadata, dict):
        raise CheckpointFormatError(f"{path}: index metadata must be an object")
    if (
        not isinstance(weight_map, dict)
        or not weight_map
        or not all(isinstance(key, str) and isinstance(value, str) for key, value in weight_map.items())
    ):
        raise CheckpointFormatError(f"{path}: index weight_map must map tensor names to shard file names")
    for shard in set(weight_map.values()):
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise CheckpointFormatError(f"{path}: shard {shard!r} must be a file name in the index's folder")
    return ShardedIndex(path=path, metadata=dict(metadata), weight_map=dict(weight_map))


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """The file to open for `path`: a .safetensors file, an index file, or a folder holding either."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / INDEX_FILENAME, path / SINGLE_FILENAME):
            if candidate.is_file():
                return candidate
        raise CheckpointFormatError(f"{path}: folder holds neither {INDEX_FILENAME} nor {SINGLE_FILENAME}")
    if not path.exists():
        raise CheckpointFormatError(f"{path}: no such file or folder")
    return path


def is_index_path(path: Path) -> bool:
    return path.name.endswith(".index.json")


def read_checkpoint_headers(path: str | os.PathLike) -> CheckpointHeaders:
    """Open a checkpoint's headers: one file, or every shard named by an index (checked against it)."""
    path = resolve_checkpoint_path(path)
    if not is_index_path(path):
        header = read_header(path)
        return CheckpointHeaders(path=path, shards={path.name: header})
    index = read_index(path)
    shards = {name: read_header(path.parent / name) for name in index.shard_files}
    problems = []
    for tensor, shard in index.weight_map.items():
        if tensor not in shards[shard].tensors:
            problems.append(f"{tensor!r} is mapped to {shard} but that shard lacks it")
    for shard, header in shards.items():
        problems += [
            f"{tensor!r} in {shard} is not in weight_map"
            for tensor in header.tensors
            if index.weight_map.get(tensor) != shard
        ]
    if problems:
        raise CheckpointFormatError(f"{path}: index disagrees with its shards: " + "; ".join(problems))
    return CheckpointHeaders(path=path, shards=shards, index=index)


def encode_header(entries: Iterable[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str]) -> bytes:
    """The bytes that start a safetensors file whose tensors follow in the given order, back to back.

    `entries` holds (name, dtype, shape). Returns the 8-byte little-endian length followed by the JSON
    header, padded with spaces so the data region starts on an 8-byte boundary.
    """
    document: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, dtype, shape in entries:
        if name in document:
            raise CheckpointFormatError(f"tensor name {name!r} appears twice in one file")
        nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
        document[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % HEADER_ALIGNMENT)
    return struct.pack("<Q", len(raw)) + raw
