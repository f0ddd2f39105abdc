"""`save` and `load`: the model core's side of the checkpoint format.

load reads top to bottom: open the headers -> read the stamp and spec -> read the tensors (hashing them
as they stream, for the lockfile) -> migrate in memory if the stamp is older -> build the model on the
meta device (no random init) -> assign the tensors strictly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint.atomic import atomic_file
from .checkpoint.header import CheckpointHeaders, encode_header, read_checkpoint_headers
from .checkpoint.io import dtype_code, read_range, tensor_bytes, tensor_from_bytes, write_all
from .checkpoint.stamp import (
    KEY_FINGERPRINT,
    Stamp,
    canonical_json,
    current_stamp,
    read_spec,
    read_stamp,
    read_tied,
    stamped_metadata,
)
from .errors import CheckpointFormatError, IrreversibleStepError, StateDictMismatchError, VersionError
from .fingerprint import compute_fingerprint
from .spec import build, spec_of

log = logging.getLogger("xtf")


def dedupe_shared(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Keep one name per shared storage (the first in sorted order); map every other name to it."""
    kept: dict[str, Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], torch.dtype], str] = {}
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


def save(model: nn.Module, path: str | os.PathLike[str], *, fingerprint: bool = True) -> Path:
    """Write `model` as a stamped safetensors file (atomically) and return its path.

    The metadata holds the xtf version, the spec (so `load` needs nothing else), shared tensors saved once
    (`xtf.tied`) and, unless `fingerprint=False`, the model's outputs on a fixed input (`xtf.fingerprint`).
    """
    path = Path(path)
    spec = spec_of(model)
    tensors, tied = dedupe_shared(model.state_dict())
    metadata = stamped_metadata({}, current_stamp(), spec, tied=tied)
    if fingerprint:
        metadata[KEY_FINGERPRINT] = canonical_json(compute_fingerprint(model))
    write_tensors(path, tensors, metadata)
    return path


def write_tensors(path: Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> None:
    """Stream tensors into a safetensors file, atomically (temp file, fsync, rename)."""
    names = sorted(tensors)
    entries = [(n, dtype_code(tensors[n].dtype), tuple(tensors[n].shape)) for n in names]
    with atomic_file(path) as fd:
        write_all(fd, encode_header(entries, metadata))
        for name in names:
            write_all(fd, tensor_bytes(tensors[name]))


def read_tensors(headers: CheckpointHeaders, hasher: Any | None = None) -> dict[str, Tensor]:
    """Every tensor of a checkpoint, read in file order; `hasher` (single files) sees every byte once."""
    tensors: dict[str, Tensor] = {}
    for header in headers.shards.values():
        fd = os.open(header.path, os.O_RDONLY)
        try:
            position = 0
            if hasher is not None:
                hasher.update(read_range(fd, 0, header.data_start))
                position = header.data_start
            for entry in header.tensors.values():
                offset = header.file_offset(entry)
                if hasher is not None and offset > position:
                    hasher.update(read_range(fd, position, offset - position))
                buffer = read_range(fd, offset, entry.nbytes)
                if hasher is not None:
                    hasher.update(buffer)
                    position = offset + entry.nbytes
                tensors[entry.name] = tensor_from_bytes(buffer, entry.dtype, entry.shape)
            if hasher is not None and position < header.file_size:
                hasher.update(read_range(fd, position, header.file_size - position))
        except OSError as exc:
            raise CheckpointFormatError(f"{header.path}: cannot read tensor data ({exc})") from exc
        finally:
            os.close(fd)
    return tensors


def load_state(
    path: str | os.PathLike[str], *, hasher: Any | None = None, target: Stamp | str | None = None
) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """(tensors, spec, info) of a checkpoint, migrated in memory to `target` (default: installed xtf).

    `info` holds `stamp` (as stored), `applied` (steps run now) and the file's `metadata`.
    """
    headers = read_checkpoint_headers(path)
    where = str(headers.path)
    metadata = headers.metadata
    stamp = read_stamp(metadata, where)
    spec = read_spec(metadata, where)
    tied = read_tied(metadata, where)
    target_stamp = Stamp.coerce(target) if target is not None else current_stamp()
    if stamp != target_stamp:
        from .chain import route

        try:  # the whole route (a newer stamp, an irreversible step) is checked before any tensor is read
            route(stamp, target_stamp)
        except (VersionError, IrreversibleStepError) as exc:
            raise type(exc)(f"{where}: {exc}") from exc
    tensors = read_tensors(headers, hasher)
    for dropped, kept in tied.items():
        if kept not in tensors:
            raise CheckpointFormatError(
                f"{where}: xtf.tied maps {dropped!r} to {kept!r}, which the file lacks"
            )
        tensors[dropped] = tensors[kept]
    applied: list[dict[str, Any]] = []
    if stamp != target_stamp:
        from .chain import migrate_in_memory

        tensors, spec, applied = migrate_in_memory(tensors, spec, stamp, target_stamp)
        log.info("xtf: migrated %s from %s to %s (%d step(s))", where, stamp, target_stamp, len(applied))
    return tensors, spec, {"stamp": stamp, "applied": applied, "metadata": metadata, "path": headers.path}


def check_state(model: nn.Module, tensors: Mapping[str, Tensor], where: str) -> None:
    """Names and shapes must match what the spec builds; the error names the first difference."""
    expected = model.state_dict(keep_vars=True)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"missing {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        if unexpected:
            parts.append(
                f"unexpected {unexpected[0]!r}"
                + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
            )
        raise StateDictMismatchError(f"{where}: tensors do not match the spec: {'; '.join(parts)}")
    for name in sorted(expected):
        if tuple(expected[name].shape) != tuple(tensors[name].shape):
            raise StateDictMismatchError(
                f"{where}: tensor {name!r} has shape {tuple(tensors[name].shape)}, the spec builds "
                f"{tuple(expected[name].shape)}; the spec (dim, heads, depth, ...) does not describe this file"
            )


def build_with_state(spec: Mapping[str, Any], tensors: Mapping[str, Tensor], where: str) -> nn.Module:
    """Build on the meta device (no random init), then assign the tensors strictly."""
    with torch.device("meta"):
        model = build(spec)
    check_state(model, tensors, where)
    model.load_state_dict(dict(tensors), strict=True, assign=True)
    leftover = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise StateDictMismatchError(f"{where}: {leftover[0]!r} was not set by the checkpoint")
    return model.eval()


def load(
    path: str | os.PathLike[str], *, lock: Any = None, device: str | torch.device | None = None
) -> nn.Module:
    """Rebuild the model a stamped checkpoint describes, from the file alone (in eval mode).

    Older stamps are migrated in memory; a newer stamp is refused. With a lockfile (`lock=`, `XTF_LOCK`,
    or an `xtf.lock` in this folder or a parent), a locked file must match its recorded sha256.
    """
    from .lock import enforce_lock

    with enforce_lock(path, lock) as hasher:
        tensors, spec, info = load_state(path, hasher=hasher)
    model = build_with_state(spec, tensors, str(info["path"]))
    return model.to(device) if device is not None else model
