"""Writes a safetensors file: its header, then each tensor's data in header order, atomically.

Every stamped file xtf writes goes through `safetensors_file` (save, convert, migrate, consolidate): the
file appears whole under its name or not at all. The distributed save lays out the same header
(`encode_header`) and lets each rank fill its own byte ranges.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from xtf_core.checkpoint.atomic import atomic_file
from xtf_core.checkpoint.header import encode_header
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
