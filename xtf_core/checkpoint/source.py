"""One opened checkpoint: headers read once; stamp, spec and tied map read from them once; tensors read from it.

Every stage of `load` and `xtf migrate` takes this object (lockfile check, planning, reading, building or
writing), so a checkpoint's headers are parsed exactly once per call, and each shard is opened once.

Reading tensors (`read_tensors`):
- on the CPU, a tensor is a view of a private memory map of its file: its pages are the page cache's (no
  copy is made, and tensors no migration step touches are never copied); writing to one copies only that
  page. With a hasher (a lockfile), the hasher reads that same map once, so the digest is of the bytes the
  tensors view. xtf writes checkpoints by atomic rename, so a file rewritten by xtf leaves loaded tensors
  intact; a file rewritten or truncated in place by another program under a live model is not supported;
- with a CUDA `device`, bytes go from the file through pinned buffers straight into device tensors (a
  hasher sees each buffer before its copy); the host never holds the model.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xtf_core.checkpoint.header import (
    CheckpointHeaders,
    Header,
    open_regular,
    read_checkpoint_headers,
)
from xtf_core.checkpoint.keys import is_stamped
from xtf_core.checkpoint.stamp import Stamp, read_checkpoint_stamp, read_tied
from xtf_core.errors import CheckpointFormatError

if TYPE_CHECKING:
    import torch


class OpenedCheckpoint:
    """A checkpoint (one file, or a sharded folder with its index) whose headers have been read."""

    def __init__(self, headers: CheckpointHeaders):
        self.headers = headers
        self._fds: dict[str, int] = {}

    # ---------------------------------------------------------------------------- what the headers say

    @property
    def path(self) -> Path:
        """The file opened: the safetensors file, or the index of a sharded folder."""
        return self.headers.path

    @property
    def where(self) -> str:
        return str(self.headers.path)

    @property
    def metadata(self) -> dict[str, str]:
        return self.headers.metadata

    @property
    def is_sharded(self) -> bool:
        return self.headers.is_sharded

    @property
    def is_stamped(self) -> bool:
        return is_stamped(self.headers.metadata)

    @functools.cached_property
    def key(self) -> Path:
        """The resolved path the checkpoint is known by (lockfile entries): the file, or the folder."""
        return (self.headers.folder if self.headers.is_sharded else self.headers.path).resolve()

    @property
    def files(self) -> list[Path]:
        """The files whose bytes make up the checkpoint, sorted by name (the index included)."""
        if not self.headers.is_sharded:
            return [self.headers.path]
        paths = [self.headers.path, *(header.path for header in self.headers.shards.values())]
        return sorted(paths, key=lambda p: p.name)

    @functools.cached_property
    def _stamp_and_spec(self) -> tuple[Stamp, dict]:
        return read_checkpoint_stamp(self.headers)

    @property
    def stamp(self) -> Stamp:
        return self._stamp_and_spec[0]

    @property
    def spec(self) -> dict:
        """The stored spec (a fresh copy each time: callers may change theirs)."""
        return dict(self._stamp_and_spec[1])

    @functools.cached_property
    def tied(self) -> dict[str, str]:
        return read_tied(self.headers.metadata, self.where)

    # ----------------------------------------------------------------------------------- the shards

    def shard_fd(self, shard: str) -> int:
        """A read descriptor for a shard (opened once): still a regular file, still the size its header
        was read at."""
        fd = self._fds.get(shard)
        if fd is None:
            header = self.headers.shards[shard]
            fd, size = open_regular(header.path)
            if size != header.file_size:
                os.close(fd)
                raise CheckpointFormatError(
                    f"{header.path}: the file changed size since its header was read "
                    f"({header.file_size} -> {size} bytes)"
                )
            self._fds[shard] = fd
        return fd

    def close(self) -> None:
        """Close the shards' descriptors (tensors already read, memory-mapped ones included, stay valid)."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self) -> OpenedCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - a safety net; callers close explicitly
        with contextlib.suppress(Exception):
            self.close()

    # ---------------------------------------------------------------------------------- the tensors

    def read_tensors(
        self, *, device: str | torch.device | None = None, hashers: Mapping[str, Any] | None = None
    ) -> dict[str, torch.Tensor]:
        """Every tensor, by name, in file order (see the module docstring for the three paths).

        `hashers` maps shard file names to hashlib objects; a hashed shard is read in one pass over every
        byte of its file (header and padding included). `device`: where the tensors go (default: CPU).
        """
        import torch

        target = torch.device(device) if device is not None else torch.device("cpu")
        hashers = hashers or {}
        tensors: dict[str, torch.Tensor] = {}
        stager = None
        for shard, header in self.headers.shards.items():
            hasher = hashers.get(header.path.name)
            try:
                fd = self.shard_fd(shard)
                if target.type == "cuda":
                    if stager is None:
                        from xtf_core.checkpoint.io import DeviceStager

                        stager = DeviceStager(target)
                    tensors.update(_staged(fd, header, stager, target, hasher))
                else:
                    tensors.update(_mapped(fd, header, hasher))
            except OSError as exc:
                raise CheckpointFormatError(f"{header.path}: cannot read tensor data ({exc})") from exc
        if stager is not None:
            stager.finish()
        if target.type not in ("cpu", "cuda"):  # other accelerators: from the map, one copy each
            tensors = {name: tensor.to(target) for name, tensor in tensors.items()}
        return tensors


def open_checkpoint(path: str | os.PathLike[str] | OpenedCheckpoint) -> OpenedCheckpoint:
    """Read a checkpoint's headers (a file, an index, or a folder holding either); an opened one is
    returned as it is."""
    if isinstance(path, OpenedCheckpoint):
        return path
    return OpenedCheckpoint(read_checkpoint_headers(path))


def _mapped(fd: int, header: Header, hasher: Any) -> dict[str, torch.Tensor]:
    """Each tensor a view of the file's private map; the hasher (if any) reads the whole map once."""
    from xtf_core.checkpoint.io import hash_map, map_file, tensor_in_map

    mapping = map_file(fd, header.file_size)
    tensors = {
        entry.name: tensor_in_map(mapping, header.file_offset(entry), entry.dtype, entry.shape)
        for entry in header.tensors.values()
    }
    if hasher is not None:
        hash_map(mapping, hasher)
    return tensors


def _staged(
    fd: int, header: Header, stager: Any, device: torch.device, hasher: Any
) -> dict[str, torch.Tensor]:
    import torch

    from xtf_core.checkpoint.io import torch_dtype

    tensors, targets = {}, []
    for entry in header.tensors.values():
        tensor = torch.empty(entry.shape, dtype=torch_dtype(entry.dtype), device=device)
        tensors[entry.name] = tensor
        if entry.nbytes:
            targets.append((header.file_offset(entry), tensor))
    if hasher is not None:
        start, end = 0, header.file_size
    elif targets:
        start, end = targets[0][0], max(offset + t.numel() * t.element_size() for offset, t in targets)
    else:
        start = end = 0
    stager.copy_file(fd, start, end, targets, hasher)
    return tensors
