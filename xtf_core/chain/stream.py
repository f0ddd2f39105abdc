"""Run a migration plan on files: copy untouched bytes raw, compute the rest one tensor at a time.

Data path: plan (headers only) -> refuse early (output exists, backup exists, a dropped tensor not zero) ->
backup for --in-place -> write each output file atomically -> a sharded folder is swapped in whole. Peak
memory is about the largest tensor a step decodes; renamed or re-keyed tensors are never decoded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from xtf_core.chain.graph import Chain
from xtf_core.chain.plan import FilePlan, plan_file
from xtf_core.chain.tensors import Computed, Realiser, StoredBytes, TensorNode, check_drops
from xtf_core.checkpoint.atomic import atomic_folder, backup_for_rewrite, is_temp_leftover
from xtf_core.checkpoint.header import DTYPE_SIZES, resolve_checkpoint_path
from xtf_core.checkpoint.io import (
    copy_range,
    dtype_code,
    read_range,
    tensor_bytes,
    tensor_from_bytes,
    write_all,
)
from xtf_core.checkpoint.source import OpenedCheckpoint, open_checkpoint
from xtf_core.checkpoint.stamp import Stamp
from xtf_core.checkpoint.writer import safetensors_file, write_index
from xtf_core.errors import MigrationError

Progress = Callable[[int], None]
ELEMENTWISE_CHUNK_BYTES = 16 * 2**20


def migrate_file(
    src: str | os.PathLike,
    dst: str | os.PathLike | None = None,
    *,
    in_place: bool = False,
    target: Stamp | str | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    chain: Chain | None = None,
    plan: FilePlan | None = None,
) -> FilePlan:
    """Migrate checkpoint `src` (file, sharded folder, index, or an opened checkpoint) to `target`
    (default: installed release).

    Writes to `dst`, or over `src` with `in_place=True` (after keeping `<name>.bak`). `dry_run` returns the
    plan and writes nothing. `progress` is called with the number of bytes each written tensor adds.
    `plan` (from `plan_file`, e.g. to size a progress bar) is run as it is: `src` must be the checkpoint it
    was planned from, and nothing is planned again.
    """
    if (dst is None) == (not in_place):
        raise MigrationError("give exactly one of an output path (-o OUT) or --in-place")
    owned = plan is None or plan.source is None  # the descriptors this call opens, it closes
    if plan is None:
        plan = plan_file(src, target, chain)
    else:
        _check_plan_matches(plan, src, target)
    if dry_run:
        return plan
    source = plan.headers.folder if plan.headers.is_sharded else plan.headers.path
    destination = source if in_place else Path(dst)
    if not in_place and (destination.exists() or destination.is_symlink()):
        raise MigrationError(
            f"output {destination} already exists; choose another -o path or remove it first"
        )
    if not destination.parent.is_dir():
        raise MigrationError(f"output folder {destination.parent} does not exist; create it first")
    opened = plan.source if plan.source is not None else open_checkpoint(plan.headers.path)
    try:
        _write(plan, opened, source, destination, in_place, progress)
    except OSError as exc:
        raise MigrationError(
            f"{destination}: {exc.strerror or exc} while writing; nothing was written at the output path"
        ) from exc
    finally:
        if owned and opened is not src:
            opened.close()
    return plan


def _check_plan_matches(plan: FilePlan, src: object, target: Stamp | str | None) -> None:
    """A plan handed in must be for this checkpoint and this target (a plan is never silently re-aimed)."""
    planned_from = plan.headers.path.resolve()
    given = src.path if isinstance(src, OpenedCheckpoint) else resolve_checkpoint_path(src)  # type: ignore[arg-type]
    if Path(given).resolve() != planned_from:
        raise MigrationError(f"the plan was made for {plan.headers.path}, not for {src}")
    if target is not None and Stamp.coerce(target) != plan.route.target:
        raise MigrationError(f"the plan targets {plan.route.target}, not {target}")


def _write(
    plan: FilePlan,
    opened: OpenedCheckpoint,
    source: Path,
    destination: Path,
    in_place: bool,
    progress: Progress | None,
) -> None:
    """Check drops, back up for --in-place, then write every output file atomically."""
    source_fds = {shard: opened.shard_fd(shard) for shard in plan.headers.shards}
    realise = Realiser(lambda node: _read_stored(source_fds, node))
    check_drops(plan.drops, realise)
    with backup_for_rewrite(source) if in_place else contextlib.nullcontext():
        if plan.headers.is_sharded:
            _write_sharded(plan, destination, source_fds, realise, progress)
        else:
            tensors = plan.outputs[plan.headers.path.name]
            with safetensors_file(destination, _entries(tensors), plan.metadata) as fd:
                _write_tensors(fd, tensors, source_fds, realise, progress)


def _read_stored(source_fds: dict[str, int], node: StoredBytes):
    return tensor_from_bytes(
        read_range(source_fds[node.source], node.offset, node.nbytes), node.dtype, node.shape
    )


def _entries(tensors: dict[str, TensorNode]) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(name, node.dtype, node.shape) for name, node in tensors.items()]


def _write_tensors(
    fd: int,
    tensors: dict[str, TensorNode],
    source_fds: dict[str, int],
    realise: Realiser,
    progress: Progress | None,
) -> None:
    """Each tensor's bytes back to back, in the header's order (the header is written already).

    Raw tensors that sit back to back in the source are copied as one range (one kernel call for a whole
    rename-only file); everything else is produced tensor by tensor.
    """
    run = RawRun()
    for name, node in tensors.items():
        if isinstance(node, StoredBytes):
            if not run.extend(node):
                run.flush(fd, source_fds, progress)
                run = RawRun(node.source, node.offset, node.nbytes)
            continue
        run.flush(fd, source_fds, progress)
        run = RawRun()
        if _streams_in_chunks(node):
            _write_elementwise(fd, node, source_fds)
        else:
            tensor = realise(node)
            produced = (dtype_code(tensor.dtype), tuple(tensor.shape))
            if produced != (node.dtype, node.shape):
                raise MigrationError(
                    f"tensor {name!r}: the step produced {produced[0]}{list(produced[1])}, "
                    f"its plan says {node.dtype}{list(node.shape)}"
                )
            write_all(fd, tensor_bytes(tensor))
        if progress is not None:
            progress(node.nbytes)
    run.flush(fd, source_fds, progress)


@dataclass
class RawRun:
    """A byte range of one source shard to copy undecoded, grown while tensors follow each other."""

    source: str | None = None
    offset: int = 0
    nbytes: int = 0

    def extend(self, node: StoredBytes) -> bool:
        if self.source != node.source or node.offset != self.offset + self.nbytes:
            return False
        self.nbytes += node.nbytes
        return True

    def flush(self, fd: int, source_fds: dict[str, int], progress: Progress | None) -> None:
        if self.source is not None and self.nbytes:
            copy_range(source_fds[self.source], self.offset, self.nbytes, fd)
            if progress is not None:
                progress(self.nbytes)


def _streams_in_chunks(node: TensorNode) -> bool:
    """An elementwise transform of stored bytes larger than one chunk is computed chunk by chunk."""
    return (
        isinstance(node, Computed)
        and node.elementwise
        and len(node.inputs) == 1
        and isinstance(node.inputs[0], StoredBytes)
        and node.nbytes > ELEMENTWISE_CHUNK_BYTES
    )


def _write_elementwise(fd: int, node: Computed, source_fds: dict[str, int]) -> None:
    """Read, transform and write an elementwise-transformed tensor in flat chunks (peak: about two chunks)."""
    stored = node.inputs[0]
    itemsize = DTYPE_SIZES[stored.dtype]
    chunk = ELEMENTWISE_CHUNK_BYTES // itemsize * itemsize
    for start in range(0, stored.nbytes, chunk):
        length = min(chunk, stored.nbytes - start)
        buffer = read_range(source_fds[stored.source], stored.offset + start, length)
        piece = node.fn(tensor_from_bytes(buffer, stored.dtype, (length // itemsize,)))
        write_all(fd, tensor_bytes(piece))


def _write_sharded(
    plan: FilePlan,
    destination: Path,
    source_fds: dict[str, int],
    realise: Realiser,
    progress: Progress | None,
) -> None:
    """Every shard, then the index, into a temporary folder that replaces `destination` at the end."""
    headers = plan.headers
    index = headers.index
    skipped = {index.path.name, *headers.shards}
    with atomic_folder(destination) as folder:
        for shard, tensors in plan.outputs.items():
            if not tensors:
                continue
            shard_metadata = {**headers.shards[shard].metadata, **plan.metadata}
            with safetensors_file(folder / shard, _entries(tensors), shard_metadata) as fd:
                _write_tensors(fd, tensors, source_fds, realise, progress)
        weight_map = {name: shard for shard, tensors in plan.outputs.items() for name in tensors}
        write_index(
            folder / index.path.name, {**index.metadata, **plan.metadata}, weight_map, plan.output_bytes
        )
        for other in sorted(headers.folder.iterdir()):
            if other.is_file() and other.name not in skipped and not is_temp_leftover(other):
                shutil.copy2(other, folder / other.name)
