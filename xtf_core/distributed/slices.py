"""The load plan of a stamped checkpoint, and reading any slice of a migrated tensor from the stored bytes.

`plan_load` runs the migration route over the header's lazy tensors (the same ops as `xtf migrate`), so every
tensor the model wants is a node: stored bytes (renamed, reshaped or cut along dim 0 on the way), or a
computation over other nodes (split, merge, reshape, transpose, value transform). `read_slice` maps a slice
of a node back to slices of its inputs, so a rank reads only the rows it owns:

- stored bytes: the rows covering the slice (exactly the slice for a dim-0 shard);
- split/merge/transpose: the matching slice(s) of the input(s), cut or joined as the op says;
- reshape of a computed tensor: the input rows covering the slice's flat range;
- an elementwise value transform: applied to the slice after it is read;
- anything else (a row permutation, a transform over a whole tensor, an op of unknown kind): the tensor is
  computed whole from its inputs, read whole, and the slice is kept; one such tensor at a time, so a rank's
  peak stays within its shard plus the largest such tensor (and its inputs).
"""

from __future__ import annotations

import errno
import math
import os
from dataclasses import dataclass
from pathlib import Path

from xtf_core.chain.graph import Route, default_chain
from xtf_core.chain.plan import checkpoint_stamp, plan_steps, run_steps
from xtf_core.chain.tensors import (
    Computed,
    DroppedTensor,
    Filled,
    GivenTensor,
    Realiser,
    StoredBytes,
    TensorNode,
    Workspace,
    check_drops,
)
from xtf_core.checkpoint.header import DTYPE_SIZES, CheckpointHeaders, read_checkpoint_headers
from xtf_core.checkpoint.stamp import Stamp, current_stamp, read_migrations, read_tied
from xtf_core.errors import CheckpointFormatError, MigrationError, VersionError


@dataclass
class LoadPlan:
    """What a sharded load reads: the migrated spec and, per state-dict name, the node that produces it."""

    headers: CheckpointHeaders
    stamp: Stamp
    route: Route
    spec: dict
    nodes: dict[str, TensorNode]
    drops: list[DroppedTensor]

    @property
    def where(self) -> str:
        return str(self.headers.path)

    @property
    def applied(self) -> list[dict[str, str]]:
        return self.route.records()


def plan_load(path: str | os.PathLike) -> LoadPlan:
    """Headers -> stamp (refusing a newer one) -> route -> ops over lazy tensors; reads no tensor data."""
    headers = read_checkpoint_headers(path)
    where = str(headers.path)
    stamp, spec = checkpoint_stamp(headers)
    read_migrations(headers.metadata, where)
    tied = read_tied(headers.metadata, where)
    target = current_stamp()
    if stamp.lineage == target.lineage and stamp > target:
        raise VersionError(
            f"{where}: written by {stamp}, newer than the installed {target}; upgrade xtf "
            f"(pip install -U xtf) or have {stamp} migrate it down: xtf migrate {where} --to {target.version} -o OUT"
        )
    route = default_chain().route(stamp, target)
    planned = plan_steps(route, spec)
    ws = Workspace(
        {
            entry.name: StoredBytes(
                entry.dtype, entry.shape, shard, headers.shards[shard].file_offset(entry), entry.name
            )
            for shard, entry in headers.entries()
        }
    )
    for dropped, kept in tied.items():
        if kept not in ws.tensors:
            raise CheckpointFormatError(
                f"{where}: xtf.tied maps {dropped!r} to {kept!r}, which the file lacks"
            )
        ws.tensors[dropped] = ws.tensors[kept]
    run_steps(planned, ws)
    for name, node in ws.tensors.items():
        _check_sliceable(node, name, where)
    new_spec = planned[-1].spec_after if planned else spec
    return LoadPlan(headers, stamp, route, new_spec, dict(ws.tensors), ws.drops)


def _check_sliceable(node: TensorNode, name: str, where: str) -> None:
    """Refuse, before anything is read, a node that has no function to compute it."""
    if not isinstance(node, Computed):
        return
    if not callable(node.fn):
        raise MigrationError(
            f"{where}: tensor {name!r} is produced by {node.label!r}, which cannot be computed"
        )
    for item in node.inputs:
        _check_sliceable(item, name, where)


def _sliceable(node: Computed) -> bool:
    """Whether a slice of `node` is computed from slices of its inputs (else: whole, then cut)."""
    if node.kind == "transform":
        return bool(node.elementwise)
    return node.kind in ("narrow", "cat", "transpose", "reshape")


class SliceReader:
    """Reads slices of plan nodes from the checkpoint's files (file descriptors opened on first use)."""

    def __init__(self, headers: CheckpointHeaders):
        self.headers = headers
        self._fds: dict[str, int] = {}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _fd(self, shard: str) -> int:
        if shard not in self._fds:
            path = Path(self.headers.shards[shard].path)
            try:
                self._fds[shard] = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise CheckpointFormatError(f"{path}: cannot open ({exc.strerror or exc})") from exc
        return self._fds[shard]

    def read_bytes(self, node: StoredBytes, start: int, nbytes: int) -> bytearray:
        from xtf_core.checkpoint.io import read_range

        try:
            return read_range(self._fd(node.source), node.offset + start, nbytes)
        except OSError as exc:
            path = self.headers.shards[node.source].path
            raise CheckpointFormatError(
                f"{path}: cannot read tensor {node.origin!r} ({exc.strerror or exc})"
            ) from exc

    def read_into(self, node: TensorNode, offsets, lengths, target) -> bool:
        """Read a stored slice straight into `target`'s memory when it is one contiguous byte range
        (a dim-0 shard of stored bytes into a contiguous tensor); False when it is not."""
        from xtf_core.checkpoint.io import dtype_code, tensor_memory

        lengths = tuple(int(v) for v in lengths)
        if (
            not isinstance(node, StoredBytes)
            or not node.shape
            or tuple(lengths[1:]) != tuple(node.shape[1:])
            or not target.is_contiguous()
            or target.device.type != "cpu"
            or dtype_code(target.dtype) != node.dtype
            or tuple(target.shape) != lengths
            or target.numel() == 0
        ):
            return False

        row_bytes = math.prod(node.shape[1:]) * DTYPE_SIZES[node.dtype]
        view = tensor_memory(target)
        start, done = node.offset + int(offsets[0]) * row_bytes, 0
        fd = self._fd(node.source)
        try:
            while done < len(view):
                got = os.preadv(fd, [view[done:]], start + done)
                if got == 0:
                    raise OSError(errno.EIO, f"unexpected end of file at offset {start + done}")
                done += got
        except OSError as exc:
            path = self.headers.shards[node.source].path
            raise CheckpointFormatError(
                f"{path}: cannot read tensor {node.origin!r} ({exc.strerror or exc})"
            ) from exc
        return True

    def check_drops(self, drops: list[DroppedTensor]) -> None:
        realise = Realiser(lambda node: self.read_slice(node, (0,) * len(node.shape), node.shape))
        check_drops(drops, realise)

    def read_slice(self, node: TensorNode, offsets, lengths):
        """The tensor `node[offsets : offsets + lengths]` (one range per dimension), reading only what it needs."""
        import torch

        from xtf_core.checkpoint.io import tensor_from_bytes, torch_dtype

        offsets, lengths = tuple(int(v) for v in offsets), tuple(int(v) for v in lengths)
        if any(length == 0 for length in lengths):
            return torch.empty(lengths, dtype=torch_dtype(node.dtype))
        if isinstance(node, StoredBytes):
            if not node.shape:
                return tensor_from_bytes(self.read_bytes(node, 0, node.nbytes), node.dtype, ())
            row_bytes = math.prod(node.shape[1:]) * DTYPE_SIZES[node.dtype]
            buffer = self.read_bytes(node, offsets[0] * row_bytes, lengths[0] * row_bytes)
            rows = tensor_from_bytes(buffer, node.dtype, (lengths[0], *node.shape[1:]))
            return _narrow_rest(rows, offsets, lengths)
        if isinstance(node, Filled):
            return torch.full(lengths, node.fill, dtype=torch_dtype(node.dtype))
        if isinstance(node, GivenTensor):
            return _narrow_all(node.value, offsets, lengths)
        if isinstance(node, Computed):
            return self._read_computed(node, offsets, lengths)
        raise TypeError(f"unknown tensor node {type(node).__name__}")

    def _read_computed(self, node: Computed, offsets: tuple[int, ...], lengths: tuple[int, ...]):
        import torch

        kind, args = node.kind, node.args
        if not _sliceable(node):  # computed whole from whole inputs, then cut: one tensor at a time
            whole = node.fn(
                *(self.read_slice(item, (0,) * len(item.shape), item.shape) for item in node.inputs)
            )
            return _narrow_all(whole, offsets, lengths)
        if kind == "transform":  # elementwise: applied to the slice
            return node.fn(self.read_slice(node.inputs[0], offsets, lengths))
        if kind == "narrow":
            dim, start, _ = args
            shifted = list(offsets)
            shifted[dim] += start
            return self.read_slice(node.inputs[0], shifted, lengths)
        if kind == "transpose":
            dim0, dim1 = args
            offs, lens = list(offsets), list(lengths)
            offs[dim0], offs[dim1] = offs[dim1], offs[dim0]
            lens[dim0], lens[dim1] = lens[dim1], lens[dim0]
            return self.read_slice(node.inputs[0], offs, lens).transpose(dim0, dim1).contiguous()
        if kind == "cat":
            (dim,) = args
            pieces, begin = [], 0
            lo, hi = offsets[dim], offsets[dim] + lengths[dim]
            for item in node.inputs:
                end = begin + item.shape[dim]
                a, b = max(lo, begin), min(hi, end)
                if a < b:
                    offs, lens = list(offsets), list(lengths)
                    offs[dim], lens[dim] = a - begin, b - a
                    pieces.append(self.read_slice(item, offs, lens))
                begin = end
            return torch.cat(pieces, dim=dim)
        if kind == "reshape":
            return self._read_reshaped(node, offsets, lengths)
        raise MigrationError(f"{node.label!r} cannot be sliced")  # unreachable: _sliceable above

    def _read_reshaped(self, node: Computed, offsets: tuple[int, ...], lengths: tuple[int, ...]):
        """Rows of the output cover a flat range; read the input rows covering it, then cut and reshape."""
        (source,) = node.inputs
        if not node.shape:
            return self.read_slice(source, (0,) * len(source.shape), source.shape).reshape(())
        out_row = math.prod(node.shape[1:])
        flat_lo, flat_hi = offsets[0] * out_row, (offsets[0] + lengths[0]) * out_row
        if not source.shape:
            flat = self.read_slice(source, (), ()).reshape(-1)
            first = 0
        else:
            in_row = max(1, math.prod(source.shape[1:]))
            first, last = flat_lo // in_row, -(-flat_hi // in_row)
            lens = (last - first, *source.shape[1:])
            flat = self.read_slice(source, (first, *(0,) * (len(source.shape) - 1)), lens).reshape(-1)
            first *= in_row
        rows = flat[flat_lo - first : flat_hi - first].reshape(lengths[0], *node.shape[1:])
        return _narrow_rest(rows, offsets, lengths)


def _narrow_rest(rows, offsets: tuple[int, ...], lengths: tuple[int, ...]):
    """Cut dims 1.. of a tensor whose dim 0 already is the slice."""
    out = rows
    for dim in range(1, len(lengths)):
        if offsets[dim] != 0 or lengths[dim] != out.shape[dim]:
            out = out.narrow(dim, offsets[dim], lengths[dim])
    return out.contiguous() if out is not rows else out


def _narrow_all(tensor, offsets: tuple[int, ...], lengths: tuple[int, ...]):
    out = tensor
    for dim, (offset, length) in enumerate(zip(offsets, lengths)):
        out = out.narrow(dim, offset, length)
    return out.contiguous()
