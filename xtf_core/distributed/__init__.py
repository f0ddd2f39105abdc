"""Stamped checkpoints on many ranks, through `torch.distributed.checkpoint` (DCP).

- `load(path, model)`: every rank reads only the slices its (possibly FSDP2/DTensor-sharded) parameters own;
  an older stamp is migrated on the fly in the load plan (see `slices.py`).
- `save(model, folder)`: every rank writes its own bytes into a stamped sharded safetensors folder.
- `consolidate(folder, out)`: one stamped file from a sharded folder, streamed, atomic.

Errors are agreed between ranks: whatever fails on one rank is raised on every rank, as the same one-line
`XtfError`, so no rank is left waiting in a collective.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from xtf_core import errors
from xtf_core.errors import StateDictMismatchError, XtfError

from .consolidate import consolidate
from .slices import LoadPlan, plan_load

__all__ = ["consolidate", "load", "plan_load", "save"]

T = TypeVar("T")


def _distributed(group: Any) -> bool:
    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def _quiet_single_process(group: Any) -> Iterator[None]:
    """Without a process group DCP works in one process; its warning says so on every call."""
    with warnings.catch_warnings():
        if not _distributed(group):
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _rebuild(rank: int, kind: str, message: str) -> XtfError:
    cls = getattr(errors, kind, None)
    text = f"rank {rank}: {message}"
    if isinstance(cls, type) and issubclass(cls, XtfError):
        try:
            return cls(text)
        except TypeError:
            pass
    return XtfError(text)


def agree(step: Callable[[], T], group: Any = None) -> T:
    """Run `step` on every rank; if it failed anywhere, raise on every rank (the lowest failing rank's error).

    A rank that failed itself re-raises its own exception; the others raise the same XtfError class with
    the failing rank named.
    """
    failure: tuple[str, str] | None = None
    result: T | None = None
    error: BaseException | None = None
    try:
        result = step()
    except Exception as exc:  # every rank must hear about it, whatever it is
        error = exc
        kind = type(exc).__name__ if isinstance(exc, XtfError) else "XtfError"
        message = " ".join(str(exc).split())
        failure = (kind, message if isinstance(exc, XtfError) else f"{type(exc).__name__}: {message}")
    if not _distributed(group):
        if error is not None:
            raise error
        return result  # type: ignore[return-value]
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, failure, group=group)
    if error is not None:
        raise error
    for rank, found in enumerate(gathered):
        if found is not None:
            raise _rebuild(rank, *found)
    return result  # type: ignore[return-value]


def _from_checkpoint_exception(exc: BaseException, local_rank: int) -> BaseException:
    """The XtfError behind a DCP CheckpointException (this rank's own if it failed, else the lowest rank's)."""
    failures = getattr(exc, "failures", {}) or {}
    if not failures:
        return exc
    rank = local_rank if local_rank in failures else min(failures)
    cause = failures[rank][0] if isinstance(failures[rank], tuple) else failures[rank]
    if rank == local_rank and isinstance(cause, XtfError):
        return cause
    if isinstance(cause, XtfError):
        return _rebuild(rank, type(cause).__name__, " ".join(str(cause).split()))
    return XtfError(f"rank {rank}: {type(cause).__name__}: {' '.join(str(cause).split())}")


def first_difference(expected: Any, actual: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first option (dotted path, sorted order) where two specs differ, with both values."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in expected or key not in actual:
                return where, expected.get(key, "<absent>"), actual.get(key, "<absent>")
            found = first_difference(expected[key], actual[key], where)
            if found is not None:
                return found
        return None
    if expected != actual or type(expected) is not type(actual):
        return path or "<spec>", expected, actual
    return None


def _check_model(plan: LoadPlan, model: nn.Module) -> dict[str, torch.Tensor]:
    """Spec, names and shapes agree; parameters are materialised. Returns the model's state dict."""
    from xtf_core.errors import SpecError
    from xtf_core.loading import check_state
    from xtf_core.spec import spec_of

    spec = spec_of(model)
    diff = first_difference(plan.spec, spec)
    if diff is not None:
        option, in_file, in_model = diff
        raise SpecError(
            f"{plan.where}: the checkpoint's spec (after migration to the installed xtf) differs from the "
            f"model's at {option!r}: file {in_file!r}, model {in_model!r}; build the model with "
            f"xtf_core.build(spec) from the file's spec"
        )
    check_state(model, plan.nodes, plan.where)
    state = model.state_dict()
    on_meta = [name for name, tensor in state.items() if _local(tensor).is_meta]
    if on_meta:
        raise StateDictMismatchError(
            f"{plan.where}: the model's {on_meta[0]!r} is on the meta device; materialise the model first "
            f"(model.to_empty(device=...)) so the checkpoint has somewhere to go"
        )
    return state


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def load(
    path: str | os.PathLike[str], model: nn.Module, *, process_group: Any = None, lock: Any = None
) -> dict[str, Any]:
    """Fill `model` (plain or DTensor/FSDP2-sharded parameters) from a stamped checkpoint, on every rank.

    Call on every rank of the process group (or in a single process). Each rank reads only the slices it
    owns. An older stamp is migrated in the load plan: renames, reshapes, splits, merges and elementwise
    value transforms are applied to the slices read; any other step computes the tensors it touches whole,
    one at a time, and keeps each rank's slice. The lockfile is enforced as `xtf_core.load` enforces it
    (`lock=`, `XTF_LOCK`, or `xtf.lock` found from the current folder): rank 0 hashes the locked files
    once and every rank refuses a mismatch. Returns `{"stamp", "applied", "path"}`.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner

    from .storage import StampedReader

    rank = dist.get_rank(process_group) if _distributed(process_group) else 0

    def prepare() -> tuple[LoadPlan, dict[str, torch.Tensor]]:
        plan = plan_load(path)
        if rank == 0:
            _check_lock(plan, lock)
        state = _check_model(plan, model)
        from .slices import SliceReader

        reader = SliceReader(plan.headers)
        try:
            reader.check_drops(plan.drops)
        finally:
            reader.close()
        return plan, state

    plan, state = agree(prepare, process_group)
    try:
        with _quiet_single_process(process_group):
            dcp.load(
                state,
                storage_reader=StampedReader(plan),
                planner=DefaultLoadPlanner(),
                process_group=process_group,
            )
    except BaseException as exc:
        if type(exc).__name__ != "CheckpointException":
            raise
        raise _from_checkpoint_exception(exc, rank) from exc
    # dcp.load copied every slice into the state dict's tensors, which share storage with the parameters
    # (the DTensors' local shards for FSDP2), so the model already holds the checkpoint: no second copy.
    return {"stamp": str(plan.stamp), "applied": plan.applied, "path": str(plan.headers.path)}


def _check_lock(plan: LoadPlan, lock: Any) -> None:
    """Refuse a locked checkpoint whose files changed (hashes every locked file: one read, on one rank)."""
    from xtf_core.checkpoint.source import OpenedCheckpoint
    from xtf_core.lockfile.enforce import lock_check

    with OpenedCheckpoint(plan.headers) as opened:
        check = lock_check(opened, lock)
        if check is not None:
            check.hashers = {}  # nothing is fed while reading: verify hashes each file from disk
            check.verify()


def _dedupe_tied(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with each shared parameter or buffer once (first name in sorted order), and the ties."""
    by_object = model.state_dict(keep_vars=True)
    state = model.state_dict()
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name in sorted(by_object):
        key = id(by_object[name])
        if key in first:
            tied[name] = first[key]
        else:
            first[key] = name
    return {name: tensor for name, tensor in state.items() if name not in tied}, tied


def save(
    model: nn.Module,
    folder: str | os.PathLike[str],
    *,
    fingerprint: bool = True,
    max_shard_bytes: int | None = None,
    process_group: Any = None,
) -> Path:
    """Write `model` as a stamped sharded safetensors folder, every rank writing its own slices.

    Call on every rank. The folder (`model.safetensors.index.json` + `model-0000K-of-0000N.safetensors`)
    carries the full stamp in the index and in every shard, like any xtf checkpoint. With
    `fingerprint=True` every rank runs the fingerprint forward pass (a collective for FSDP2 models).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultSavePlanner

    from xtf_core.checkpoint.stamp import KEY_FINGERPRINT, canonical_json, current_stamp, stamped_metadata
    from xtf_core.errors import MigrationError
    from xtf_core.spec import spec_of

    from .storage import DEFAULT_MAX_SHARD_BYTES, StampedWriter

    folder = Path(folder)

    def prepare() -> dict:
        if folder.exists() or folder.is_symlink():
            raise MigrationError(f"output {folder} already exists; choose another folder or remove it first")
        if not folder.parent.is_dir():
            raise MigrationError(f"output folder {folder.parent} does not exist; create it first")
        return spec_of(model)

    spec = agree(prepare, process_group)
    recorded = None
    if fingerprint:
        from xtf_core.fingerprint import compute_fingerprint

        recorded = canonical_json(compute_fingerprint(model))
    state, tied = _dedupe_tied(model)
    metadata = stamped_metadata({}, current_stamp(), spec, tied=tied)
    if recorded is not None:
        metadata[KEY_FINGERPRINT] = recorded
    writer = StampedWriter(folder, metadata, max_shard_bytes or DEFAULT_MAX_SHARD_BYTES)
    rank = dist.get_rank(process_group) if _distributed(process_group) else 0
    try:
        with _quiet_single_process(process_group):
            dcp.save(state, storage_writer=writer, planner=DefaultSavePlanner(), process_group=process_group)
    except BaseException as exc:
        writer.discard()
        if type(exc).__name__ != "CheckpointException":
            raise
        raise _from_checkpoint_exception(exc, rank) from exc
    return folder
