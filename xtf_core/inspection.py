"""`inspect_checkpoint`: what a checkpoint says about itself, read from its headers alone (no torch).

The chain (and with it every step module) is imported only for a file stamped at another release than
the installed one, to list the steps a migration would run; inspecting a current file stays fast.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any, NamedTuple

from xtf_core.checkpoint.header import read_checkpoint_headers
from xtf_core.checkpoint.keys import is_stamped
from xtf_core.checkpoint.stamp import (
    Stamp,
    current_stamp,
    describe_ignored,
    read_checkpoint_stamp,
    read_ignored,
    read_migrations,
    read_origin,
)
from xtf_core.errors import XtfError


class CheckpointSummary(NamedTuple):
    """A checkpoint's layout, stamp, spec, applied migrations and the steps pending to the installed xtf.

    A named tuple (like the header types it is read from): `xtf inspect` does not import `dataclasses`."""

    path: str
    sharded: bool
    shards: list[str]
    tensors: int
    bytes: int
    dtypes: dict[str, int]  # safetensors dtype -> tensor count
    installed: str
    stamp: str | None = None  # None: not an xtf checkpoint (nothing below is read)
    origin: str | None = None  # the stamp the file had when first stamped
    spec: dict | None = None
    migrations: list[dict] = []  # as recorded in the file (never mutated: a named tuple shares defaults)
    ignored: list[dict] | str | None = None  # kwargs the converted release ignored (`xtf convert`)
    pending: list[dict] = []  # steps `xtf migrate` would run
    pending_error: str | None = None  # why the file cannot be migrated to the installed release

    def to_json(self) -> dict[str, Any]:
        """The `xtf inspect --json` document."""
        document: dict[str, Any] = {
            "path": self.path,
            "sharded": self.sharded,
            "shards": self.shards,
            "tensors": self.tensors,
            "bytes": self.bytes,
            "dtypes": self.dtypes,
            "installed": self.installed,
            "stamp": self.stamp,
        }
        if self.stamp is None:
            return document
        document.update(origin=self.origin, spec=self.spec, migrations=self.migrations)
        if self.ignored is not None:
            document["ignored"] = self.ignored
        if self.pending_error is not None:
            document["pending_error"] = self.pending_error
        else:
            document["pending"] = self.pending
        return document

    def describe(self) -> list[str]:
        """The `xtf inspect` text, one line per item."""
        layout = f"sharded, {len(self.shards)} shards" if self.sharded else "single file"
        dtype_text = ", ".join(f"{dtype} {count}" for dtype, count in self.dtypes.items())
        lines = [
            f"{self.path} ({layout})",
            f"tensors: {self.tensors} ({self.bytes / 2**20:.1f} MiB; {dtype_text})",
        ]
        if self.stamp is None:
            return [*lines, "stamp: none (not an xtf checkpoint; convert it with xtf convert)"]
        origin = f" (first stamped {self.origin})" if self.origin else ""
        lines += [f"stamp: {self.stamp}{origin}", f"spec: {json.dumps(self.spec, sort_keys=True)}"]
        if self.ignored is not None:
            lines.append(f"ignored when built (as its release did): {describe_ignored(self.ignored)}")
        lines.append(f"applied migrations: {len(self.migrations) or 'none'}")
        lines += [
            f"  {record.get('from')} -> {record.get('to')}  {record.get('direction')}  {record.get('id')}"
            for record in self.migrations
        ]
        if self.pending_error is not None:
            lines.append(f"pending: cannot migrate to {self.installed}: {self.pending_error}")
        elif self.pending:
            lines.append(f"pending to {self.installed}: {len(self.pending)} step(s); run xtf migrate")
            lines += [f"  {record['from']} -> {record['to']}  {record['summary']}" for record in self.pending]
        else:
            lines.append(f"pending to {self.installed}: none")
        return lines


def pending_steps(stamp: Stamp) -> list[dict]:
    """The steps `xtf migrate` would run to bring a file at `stamp` to the installed release."""
    from xtf_core.chain.graph import default_chain

    route = default_chain().route(stamp)
    return [{**record, "summary": step.summary} for record, step in zip(route.records(), route.steps)]


def inspect_checkpoint(path: str | os.PathLike[str]) -> CheckpointSummary:
    """Read a checkpoint's headers (a file, a sharded folder or its index) and say what they hold."""
    headers = read_checkpoint_headers(path)
    where = str(headers.path)
    metadata = headers.metadata
    dtypes = Counter(entry.dtype for _, entry in headers.entries())
    installed = current_stamp()
    base = {
        "path": where,
        "sharded": headers.is_sharded,
        "shards": list(headers.shards),
        "tensors": headers.tensor_count,
        "bytes": headers.data_bytes,
        "dtypes": dict(sorted(dtypes.items())),
        "installed": str(installed),
    }
    if not is_stamped(metadata):
        return CheckpointSummary(**base)
    stamp, spec = read_checkpoint_stamp(headers)
    origin = read_origin(metadata, where)
    pending: list[dict] = []
    pending_error = None
    try:
        pending = [] if stamp == installed else pending_steps(stamp)
    except XtfError as exc:
        pending_error = " ".join(str(exc).split())
    return CheckpointSummary(
        **base,
        stamp=str(stamp),
        origin=f"{origin['lineage']}=={origin['version']}" if origin else None,
        spec=spec,
        migrations=read_migrations(metadata, where),
        ignored=read_ignored(metadata),
        pending=pending,
        pending_error=pending_error,
    )
