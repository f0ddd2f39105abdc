"""DCP storage plug-ins: a reader that serves migrated slices of a stamped checkpoint, and a writer that
lays a sharded state dict out as a stamped safetensors folder, each rank writing its own bytes in place.

PyTorch's DCP does the rest (planning who reads or writes which chunk, deduplicating replicated tensors,
the collectives between ranks). Neither class pickles or unpickles anything.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from xtf_core.checkpoint.atomic import fsync_dir, temp_sibling
from xtf_core.checkpoint.header import DTYPE_SIZES, INDEX_FILENAME
from xtf_core.checkpoint.io import dtype_code, tensor_bytes, torch_dtype
from xtf_core.checkpoint.writer import presized_file, write_index
from xtf_core.errors import CheckpointFormatError, MigrationError

from .slices import LoadPlan as XtfLoadPlan
from .slices import SliceReader

DEFAULT_MAX_SHARD_BYTES = 4 * 2**30


class StampedReader(StorageReader):
    """Serves a stamped checkpoint to `dcp.load` as it is after migration: one whole-tensor chunk per name.

    DCP's planner intersects each rank's shards with those chunks; `read_data` then reads only the
    requested slice of each tensor (see `slices.py`).
    """

    def __init__(self, plan: XtfLoadPlan):
        super().__init__()
        self.plan = plan
        self._slices = SliceReader(plan.headers)

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        pass

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return False

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        entries = {}
        for name, node in self.plan.nodes.items():
            size = torch.Size(node.shape)
            chunk = ChunkStorageMetadata(offsets=torch.Size([0] * len(size)), sizes=size)
            properties = TensorProperties(dtype=torch_dtype(node.dtype))
            entries[name] = TensorStorageMetadata(properties=properties, size=size, chunks=[chunk])
        return Metadata(state_dict_metadata=entries)

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        pass

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        try:
            for item in plan.items:
                node = self.plan.nodes[item.storage_index.fqn]
                target = planner.resolve_tensor(item).detach()
                if self._slices.read_into(node, item.storage_offsets, item.lengths, target):
                    planner.commit_tensor(item, target)
                    continue
                value = self._slices.read_slice(node, item.storage_offsets, item.lengths)
                if tuple(target.shape) != tuple(value.shape):
                    raise MigrationError(
                        f"{self.plan.where}: tensor {item.storage_index.fqn!r}: read {list(value.shape)}, "
                        f"the model's slice is {list(target.shape)}"
                    )
                target.copy_(value)
                planner.commit_tensor(item, target)
        finally:
            self._slices.close()
        done: Future[None] = Future()
        done.set_result(None)
        return done


@dataclasses.dataclass(frozen=True)
class _Placement:
    """Where a tensor's bytes go: the shard file, the absolute offset of its first byte, its global shape."""

    shard: str
    offset: int
    shape: tuple[int, ...]
    dtype: str


class StampedWriter(StorageWriter):
    """Writes `dcp.save`'s state dict as `model.safetensors.index.json` + `model-0000K-of-0000N.safetensors`.

    The coordinator plans the layout (every tensor whole, in one shard, sorted by name, headers stamped),
    creates the shard files in a temporary sibling folder and sizes them; every rank then writes its chunks
    at their final offsets (`pwrite`) and fsyncs; the coordinator writes the index and renames the folder
    into place. No rank ever holds another rank's data.
    """

    def __init__(self, folder: str | os.PathLike, metadata: dict[str, str], max_shard_bytes: int):
        super().__init__()
        self.folder = Path(folder)
        self.metadata = dict(metadata)
        self.max_shard_bytes = max_shard_bytes
        self.temp: Path | None = None
        self._weight_map: dict[str, str] = {}
        self._total = 0

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        pass

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return False

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        for item in plan.items:
            if item.type == WriteItemType.BYTE_IO:
                raise MigrationError(
                    f"{self.folder}: {item.index.fqn!r} is not a tensor; a stamped checkpoint holds tensors only"
                )
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
        for plan in plans:
            for item in plan.items:
                data = item.tensor_data
                tensors[item.index.fqn] = (dtype_code(data.properties.dtype), tuple(data.size))
        placements = self._create_files(tensors)
        return [
            dataclasses.replace(
                plan,
                storage_data={
                    "folder": str(self.temp),
                    "placements": {item.index.fqn: placements[item.index.fqn] for item in plan.items},
                },
            )
            for plan in plans
        ]

    def _create_files(self, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, _Placement]:
        """Assign tensors to shards and create each one sized for its data (`presized_file`); returns every
        tensor's placement."""
        groups: list[list[str]] = [[]]
        size = 0
        for name in sorted(tensors):
            dtype, shape = tensors[name]
            nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
            if groups[-1] and size + nbytes > self.max_shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(name)
            size += nbytes
            self._total += nbytes
        self.temp = temp_sibling(self.folder)
        self.temp.mkdir()
        placements: dict[str, _Placement] = {}
        for number, names in enumerate(groups, start=1):
            shard = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
            offsets = presized_file(self.temp / shard, ((n, *tensors[n]) for n in names), self.metadata)
            for name in names:
                dtype, shape = tensors[name]
                placements[name] = _Placement(shard, offsets[name], shape, dtype)
                self._weight_map[name] = shard
        return placements

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        folder = Path(plan.storage_data["folder"])
        placements: dict[str, _Placement] = plan.storage_data["placements"]
        fds: dict[str, int] = {}
        results = []
        try:
            for item in plan.items:
                placement = placements[item.index.fqn]
                if placement.shard not in fds:
                    fds[placement.shard] = os.open(folder / placement.shard, os.O_WRONLY)
                chunk = item.tensor_data.chunk
                tensor = planner.resolve_data(item)
                written = _write_chunk(
                    fds[placement.shard], placement, tuple(chunk.offsets), tuple(chunk.sizes), tensor
                )
                results.append(WriteResult(index=item.index, size_in_bytes=written, storage_data=None))
            for fd in fds.values():
                os.fsync(fd)
        except OSError as exc:
            raise CheckpointFormatError(
                f"{self.folder}: {exc.strerror or exc} while writing; nothing was written at the output path"
            ) from exc
        finally:
            for fd in fds.values():
                os.close(fd)
        done: Future[list[WriteResult]] = Future()
        done.set_result(results)
        return done

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        assert self.temp is not None
        write_index(self.temp / INDEX_FILENAME, self.metadata, self._weight_map, self._total)
        if self.folder.exists():
            raise MigrationError(
                f"output {self.folder} appeared while saving; the checkpoint is left at {self.temp}"
            )
        os.replace(self.temp, self.folder)
        fsync_dir(self.folder.parent)
        self.temp = None

    def discard(self) -> None:
        """Remove the temporary folder after a failed save (coordinator only)."""
        if self.temp is not None:
            shutil.rmtree(self.temp, ignore_errors=True)
            self.temp = None

    def storage_meta(self) -> None:
        return None


def _write_chunk(
    fd: int, placement: _Placement, offsets: tuple[int, ...], sizes: tuple[int, ...], tensor: torch.Tensor
) -> int:
    """Write a chunk of a C-ordered tensor at its place: one `pwrite` per contiguous run (one for dim-0 shards)."""
    shape = placement.shape
    itemsize = DTYPE_SIZES[placement.dtype]
    if math.prod(sizes) == 0:
        return 0
    data = tensor_bytes(tensor.reshape(sizes))
    if not shape:
        os.pwrite(fd, data, placement.offset)
        return len(data)
    # k: the last dim where the chunk is partial; every dim after it is whole, so each run is contiguous.
    k = max((d for d in range(len(shape)) if sizes[d] != shape[d]), default=0)
    run_elements = sizes[k] * math.prod(shape[k + 1 :])
    strides = [math.prod(shape[d + 1 :]) for d in range(len(shape))]
    outer = sizes[:k]
    run_bytes = run_elements * itemsize
    for run in range(math.prod(outer)):
        index, rest = [], run
        for length in reversed(outer):
            index.append(rest % length)
            rest //= length
        index.reverse()
        start = sum((offsets[d] + index[d]) * strides[d] for d in range(k)) + offsets[k] * strides[k]
        piece = data[run * run_bytes : (run + 1) * run_bytes]
        done = 0
        while done < len(piece):
            done += os.pwrite(fd, piece[done:], placement.offset + start * itemsize + done)
    return len(data)
