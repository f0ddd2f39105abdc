"""Writes safetensors files and sharded indexes: every one xtf itself makes is written here.

`safetensors_file` writes a whole file atomically (save, convert, migrate, consolidate): the file appears
under its name whole or not at all. The distributed save (`xtf_core/distributed/storage.py`) lays the same
header out with `presized_file`, which sizes the file for its data so that each rank `pwrite`s its own
byte ranges in place. `write_index` writes a sharded folder's `model.safetensors.index.json` (migrate and
the distributed save).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xtf_core.checkpoint.atomic import atomic_file
from xtf_core.checkpoint.header import DTYPE_SIZES, encode_header
from xtf_core.checkpoint.io import dtype_code, tensor_bytes, write_all

if TYPE_CHECKING:
    from torch import Tensor


@contextlib.contextmanager
def safetensors_file(
    path: str | os.PathLike[str],
    entries: Iterable[tuple[str, str, tuple[int, ...]]],
    metadata: Mapping[str, str],
) -> Iterator[int]:
    """Create `path` atomically with the header for `entries` (name, dtype, shape) and `metadata`; yields
    the descriptor the caller writes the tensors' bytes to, back to back in the same order."""
    with atomic_file(path) as fd:
        write_all(fd, encode_header(entries, metadata))
        yield fd


def presized_file(
    path: str | os.PathLike[str],
    entries: Iterable[tuple[str, str, tuple[int, ...]]],
    metadata: Mapping[str, str],
) -> dict[str, int]:
    """Create `path` (refused if it exists) with the header for `entries` (name, dtype, shape) and
    `metadata`, sized for its whole data region, which is left to be filled in place; returns each tensor's
    absolute offset in the file.

    The data region reads as zeros until written (a sparse file where the filesystem allows). Whoever fills
    it `pwrite`s each tensor's bytes at its offset and fsyncs. On failure the file is removed.
    """
    entries = list(entries)
    header = encode_header(entries, metadata)
    offsets: dict[str, int] = {}
    end = len(header)
    for name, dtype, shape in entries:
        offsets[name] = end
        end += math.prod(shape) * DTYPE_SIZES[dtype]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        written = 0
        while written < len(header):
            written += os.pwrite(fd, header[written:], written)
        os.ftruncate(fd, end)
    except BaseException:
        os.close(fd)
        Path(path).unlink(missing_ok=True)
        raise
    os.close(fd)
    return offsets


def write_index(
    path: str | os.PathLike[str],
    metadata: Mapping[str, object],
    weight_map: Mapping[str, str],
    total_size: int,
) -> None:
    """Write a sharded folder's index atomically and durably: `metadata` with `total_size` set, and
    `weight_map` (tensor name -> shard file name) sorted by name."""
    document = {
        "metadata": {**metadata, "total_size": total_size},
        "weight_map": dict(sorted(weight_map.items())),
    }
    with atomic_file(Path(path)) as fd:
        write_all(fd, (json.dumps(document, indent=2) + "\n").encode("utf-8"))


def write_tensors(
    path: str | os.PathLike[str], tensors: Mapping[str, Tensor], metadata: Mapping[str, str]
) -> None:
    """Stream tensors into a safetensors file, sorted by name, atomically (temp file, fsync, rename)."""
    names = sorted(tensors)
    entries = [(n, dtype_code(tensors[n].dtype), tuple(tensors[n].shape)) for n in names]
    with safetensors_file(path, entries, metadata) as fd:
        for name in names:
            write_all(fd, tensor_bytes(tensors[name]))


def dedupe_shared(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Keep one name per shared storage (the first in sorted order); map every other name to it."""
    kept: dict[str, Any] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name in sorted(state):
        tensor = state[name]
        key = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.dtype,
        )
        if tensor.numel() and key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        kept[name] = tensor
    return kept, tied
