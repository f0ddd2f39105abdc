"""`consolidate`: one stamped safetensors file from a sharded folder (streamed, atomic).

Shards written by `xtf_core.distributed.save` (or `xtf migrate`) hold every tensor whole, so consolidation
is a byte copy: one merged header, then each tensor's bytes copied undecoded (in-kernel where the
filesystem allows). DCP's own consolidation (`consolidate_safetensors_files`) exists to stitch per-rank
partial tensors together, which this layout never has, so it is not needed here.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xtf_core.chain.plan import checkpoint_stamp
from xtf_core.checkpoint.header import read_checkpoint_headers
from xtf_core.checkpoint.io import copy_range
from xtf_core.checkpoint.writer import safetensors_file
from xtf_core.errors import CheckpointFormatError, MigrationError


@dataclass(frozen=True)
class ConsolidateReport:
    """One sharded folder joined into one file: what was read and what was written."""

    source: str
    output: str
    stamp: str
    shards: int
    tensors: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> list[str]:
        return [
            f"{self.source} ({self.shards} shards, {self.tensors} tensors, {self.bytes / 2**20:.1f} MiB) "
            f"-> {self.output}: stamped {self.stamp}"
        ]


def consolidate(folder: str | os.PathLike[str], out: str | os.PathLike[str]) -> ConsolidateReport:
    """Write the sharded checkpoint `folder` as the single stamped file `out`; returns what it did."""
    headers = read_checkpoint_headers(folder)
    where = str(headers.path)
    if not headers.is_sharded:
        raise CheckpointFormatError(f"{where}: not a sharded checkpoint; it is already a single file")
    stamp, _ = checkpoint_stamp(headers)
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise MigrationError(f"output {out} already exists; choose another -o path or remove it first")
    if not out.parent.is_dir():
        raise MigrationError(f"output folder {out.parent} does not exist; create it first")
    entries = sorted(
        ((entry.name, shard, entry) for shard, entry in headers.entries()), key=lambda item: item[0]
    )
    metadata = headers.metadata
    fds: dict[str, int] = {}
    try:
        for shard, header in headers.shards.items():
            fds[shard] = os.open(header.path, os.O_RDONLY)
        with safetensors_file(out, ((n, e.dtype, e.shape) for n, _, e in entries), metadata) as fd:
            for _, shard, entry in entries:
                copy_range(fds[shard], headers.shards[shard].file_offset(entry), entry.nbytes, fd)
    except OSError as exc:
        raise MigrationError(
            f"{out}: {exc.strerror or exc} while writing; nothing was written there"
        ) from exc
    finally:
        for fd in fds.values():
            os.close(fd)
    return ConsolidateReport(
        source=where,
        output=str(out),
        stamp=str(stamp),
        shards=len(headers.shards),
        tensors=len(entries),
        bytes=headers.data_bytes,
    )
