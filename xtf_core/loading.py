"""`save` and `load`: the model core's side of the checkpoint format.

load reads top to bottom, each stage taking the one opened checkpoint: open (headers, stamp, spec, tied map,
read once) -> lockfile check -> plan the route once -> read the tensors (memory-mapped, or hashed as they
are read for the lockfile, or straight to the device) -> migrate in memory with that plan -> build the
model on the meta device (no random init) -> assign the tensors strictly.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .checkpoint.header import CheckpointHeaders
from .checkpoint.layout import diff_layouts
from .checkpoint.source import OpenedCheckpoint, open_checkpoint
from .checkpoint.stamp import (
    KEY_FINGERPRINT,
    Stamp,
    canonical_json,
    current_stamp,
    stamped_metadata,
)
from .checkpoint.writer import dedupe_shared, write_tensors
from .errors import (
    CheckpointFormatError,
    IrreversibleStepError,
    SpecError,
    StateDictMismatchError,
    VersionError,
    XtfError,
    bounded,
)
from .fingerprint import compute_fingerprint
from .spec import build, spec_of

if TYPE_CHECKING:
    from .lockfile.enforce import LockCheck

log = logging.getLogger("xtf")


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


def read_tensors(headers: CheckpointHeaders) -> dict[str, Tensor]:
    """Every tensor of a checkpoint whose headers are read, in file order (memory-mapped: no copy)."""
    with OpenedCheckpoint(headers) as opened:
        return opened.read_tensors()


@dataclass(frozen=True)
class LoadInfo:
    """What `load_state` read besides the tensors and spec: the stamp as stored, the steps run now (their
    `xtf.migrations` records), the file's metadata and its path."""

    stamp: Stamp
    applied: list[dict[str, str]]
    metadata: dict[str, str]
    path: Path


def load_state(
    path: str | os.PathLike[str] | OpenedCheckpoint,
    *,
    target: Stamp | str | None = None,
    device: str | torch.device | None = None,
    lock_check: LockCheck | None = None,
    verify: bool = True,
) -> tuple[dict[str, Tensor], dict[str, Any], LoadInfo]:
    """(tensors, spec, info) of a checkpoint, migrated in memory to `target` (default: installed xtf).

    `path` may be a checkpoint already opened (`open_checkpoint`): nothing is then read twice. The route
    and its steps are planned once, before any tensor is read, and handed to the migration. `device`:
    where the tensors go (straight from the file). `lock_check` (from `lock.lock_check`): its hashers see
    the bytes as they are read, and it is verified before anything is migrated (with `verify=False` the
    caller verifies it: `load` does so after building, so the digest runs while the model is built).
    `info` (a `LoadInfo`) holds `stamp` (as stored), `applied` (steps run now), the file's `metadata` and
    `path`.
    """
    opened = open_checkpoint(path)
    where = opened.where
    stamp, spec, tied = opened.stamp, opened.spec, opened.tied
    target_stamp = Stamp.coerce(target) if target is not None else current_stamp()
    plan = None
    if stamp != target_stamp:
        from .chain.plan import plan_route

        try:  # the whole route (a newer stamp, an irreversible step) is checked before any tensor is read
            plan = plan_route(stamp, spec, target_stamp)
        except (VersionError, IrreversibleStepError) as exc:
            raise type(exc)(f"{where}: {exc}") from exc
    try:
        tensors = opened.read_tensors(device=device, hashers=lock_check.hashers if lock_check else None)
    finally:
        if opened is not path:
            opened.close()
    if lock_check is not None and verify:
        lock_check.verify()
    for dropped, kept in tied.items():
        if kept not in tensors:
            raise CheckpointFormatError(
                f"{where}: xtf.tied maps {bounded(dropped)} to {bounded(kept)}, which the file lacks"
            )
        tensors[dropped] = tensors[kept]
    applied: list[dict[str, Any]] = []
    if plan is not None:
        from .chain.memory import migrate_in_memory

        tensors, spec, applied = migrate_in_memory(tensors, plan=plan)
        log.info("xtf: migrated %s from %s to %s (%d step(s))", where, stamp, target_stamp, len(applied))
        if device is not None:  # a step may add a tensor (a constant) on the CPU
            target_device = torch.device(device)
            tensors = {
                name: t if t.device.type == target_device.type else t.to(target_device)
                for name, t in tensors.items()
            }
    return tensors, spec, LoadInfo(stamp, applied, opened.metadata, opened.path)


def check_state(model: nn.Module, tensors: Mapping[str, Tensor], where: str) -> None:
    """Names and shapes must match what the spec builds; the error names the first difference."""
    diff = diff_layouts(model.state_dict(keep_vars=True), tensors)
    missing, unexpected = diff.removed, diff.added
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"missing {bounded(missing[0])}"
                + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        if unexpected:
            parts.append(
                f"unexpected {bounded(unexpected[0])}"
                + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
            )
        raise StateDictMismatchError(f"{where}: tensors do not match the spec: {'; '.join(parts)}")
    for name, (built, found) in diff.reshaped.items():
        raise StateDictMismatchError(
            f"{where}: tensor {bounded(name)} has shape {tuple(found)}, the spec builds "
            f"{tuple(built)}; the spec (dim, heads, depth, ...) does not describe this file"
        )


SIZE_OPTIONS = frozenset(
    ("dim", "num_tokens", "heads", "kv_heads", "dim_head", "value_dim_head", "dim_in", "dim_out")
)
DEPTH_OPTIONS = frozenset(("depth",))
_OPTION_PREFIXES = ("enc_", "dec_", "cross_attn_", "attn_")
_LAYER_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _option_base(key: str) -> str:
    """`enc_attn_dim_head` -> `dim_head`: the option a prefixed spec key routes to."""
    for prefix in _OPTION_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def check_spec_fits(spec: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Refuse a spec whose sizes the tensors cannot justify, before anything is built from it.

    A stack's `depth` (also `enc_depth`, `dec_depth`) or `custom_layers` cannot exceed the number of layer
    blocks (`layers.{i}.`) among the tensor names, since every block holds at least one tensor; a size
    (`dim`, `num_tokens`, `heads`, `dim_head`, `dim_in`, `dim_out`, also prefixed) cannot exceed the largest
    dimension of any tensor. So `depth: 1000000` or `num_tokens: 10**12` is one error, not a long build.
    """
    blocks = set()
    for name in shapes:
        for match in _LAYER_BLOCK.finditer(name):
            blocks.add(name[: match.end()])
    largest = max((size for shape in shapes.values() for size in shape), default=0)
    stack: list[tuple[str, Any]] = [("spec", spec)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(node))
            continue
        if not isinstance(node, Mapping):
            continue
        for key, value in node.items():
            here = f"{path}.{key}"
            if isinstance(value, (Mapping, list)):
                stack.append((here, value))
            base = _option_base(str(key))
            if base == "custom_layers" and isinstance(value, list) and len(value) > len(blocks):
                raise StateDictMismatchError(
                    f"{where}: {here} lists {len(value)} layers but the file holds {len(blocks)} layer blocks; "
                    "the spec does not describe this file"
                )
            if isinstance(value, bool) or not isinstance(value, int):
                continue
            custom = any(_option_base(str(k)) == "custom_layers" for k in node)
            if base in DEPTH_OPTIONS and not custom and value > len(blocks):
                raise StateDictMismatchError(
                    f"{where}: {here}={bounded(value)} but the file holds {len(blocks)} layer blocks; "
                    "the spec does not describe this file"
                )
            if base in SIZE_OPTIONS and value > largest:
                raise StateDictMismatchError(
                    f"{where}: {here}={bounded(value)} is larger than every tensor dimension in the file "
                    f"(largest {largest}); the spec does not describe this file"
                )


def build_spec_on_meta(spec: Mapping[str, Any], where: str) -> nn.Module:
    """`build(spec)` on the meta device; a constructor failing on odd values is a SpecError, not a traceback."""
    try:
        with torch.device("meta"):
            return build(spec)
    except XtfError:
        raise
    except Exception as exc:  # noqa: BLE001 - any constructor failure on file data is the spec's fault
        raise SpecError(
            f"{where}: the spec cannot be built ({type(exc).__name__}: {bounded(str(exc))})"
        ) from exc


def build_with_state(spec: Mapping[str, Any], tensors: Mapping[str, Tensor], where: str) -> nn.Module:
    """Check the spec against the tensors, build on the meta device (no random init), assign strictly."""
    check_spec_fits(spec, {name: tuple(t.shape) for name, t in tensors.items()}, where)
    model = build_spec_on_meta(spec, where)
    try:
        # torch's own load: the stamp already says which layout these tensors are in, so the era detection
        # a model's load_state_dict offers for plain x-transformers dicts must not run here
        nn.Module.load_state_dict(model, dict(tensors), strict=True, assign=True)
    except Exception:  # torch's error, or a legacy-layout hint: name the first difference instead
        check_state(model, tensors, where)
        raise
    leftover = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise StateDictMismatchError(f"{where}: {bounded(leftover[0])} was not set by the checkpoint")
    return model.eval()


def load(
    path: str | os.PathLike[str], *, lock: Any = None, device: str | torch.device | None = None
) -> nn.Module:
    """Rebuild the model a stamped checkpoint describes, from the file alone (in eval mode).

    Older stamps are migrated in memory; a newer stamp is refused. With a lockfile (`lock=`, `XTF_LOCK`,
    or an `xtf.lock` in this folder or a parent), a locked file must match its recorded sha256.
    """
    from .lockfile.enforce import lock_check

    with open_checkpoint(path) as opened:  # open -> lock check -> plan -> read -> migrate -> build
        check = lock_check(opened, lock)
        try:
            tensors, spec, info = load_state(opened, device=device, lock_check=check, verify=False)
            model = build_with_state(spec, tensors, str(info.path))
        except Exception:
            if check is not None:  # a changed file is refused as such (LockError), whatever else went wrong
                check.verify()
            raise
    if check is not None:
        check.verify()  # the digest of the bytes read ran while the model was built; refuse before returning
    return model
