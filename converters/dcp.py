"""Import a `torch.distributed.checkpoint` folder (`.metadata` + `__R_S.distcp`) as a stamped checkpoint.

Only the model's tensors are read: the state dict is found among DCP's flattened keys (e.g. under "model",
with optimizer state beside it), matched against what the spec builds, and streamed into the output file a
batch at a time. Nothing is unpickled unsafely: `.metadata` goes through an unpickler that only admits
DCP's metadata classes, and tensor data through DCP's reader, which uses `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

from xtf_core.checkpoint.stamp import current_stamp, stamped_metadata
from xtf_core.errors import ConversionError

from .layout import compare_layouts, layout_at
from .reports import DcpConvertReport

METADATA_FILE = ".metadata"
BATCH_BYTES = 256 * 2**20
_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED = {
    (_DCP_METADATA, name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
}


def is_dcp_checkpoint(path: str | os.PathLike[str]) -> bool:
    return Path(path).is_dir() and (Path(path) / METADATA_FILE).is_file()


class _MetadataUnpickler(pickle.Unpickler):
    """Admits DCP's metadata classes, torch dtypes and sizes; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        import torch

        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise ConversionError(
            f"DCP metadata refers to {module}.{name}, which is not part of a DCP checkpoint's metadata; "
            "refusing to unpickle it"
        )


def read_metadata(folder: str | os.PathLike[str]) -> Any:
    """DCP's `Metadata` for a checkpoint folder, unpickled through the allowlist."""
    path = Path(folder) / METADATA_FILE
    try:
        with open(path, "rb") as handle:
            return _MetadataUnpickler(handle).load()
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as exc:
        raise ConversionError(f"{path}: not a DCP metadata file ({exc})") from exc


def _reader(folder: Path):
    from torch.distributed.checkpoint import FileSystemReader

    class SafeReader(FileSystemReader):
        """DCP's file reader with the metadata read through the allowlist (tensors: weights_only loads)."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata = read_metadata(folder)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            if metadata.planner_data is None:
                metadata.planner_data = {}
            return metadata

    return SafeReader(folder)


def model_groups(metadata: Any) -> dict[str, dict[str, str]]:
    """Tensors grouped by the container they sit in: {container: {name in container: DCP key}}.

    DCP flattens nested state dicts; `planner_data` keeps each key's path, e.g. ("model", "token_emb.emb.weight").
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    paths = metadata.planner_data or {}
    groups: dict[str, dict[str, str]] = {}
    for key, entry in metadata.state_dict_metadata.items():
        if not isinstance(entry, TensorStorageMetadata):
            continue
        path = paths.get(key) or (key,)
        container = ".".join(str(part) for part in path[:-1])
        groups.setdefault(container, {})[str(path[-1])] = key
    return groups


def _choose_group(
    groups: dict[str, dict[str, str]], expected: dict[str, tuple[int, ...]], key: str | None, where: str
) -> str:
    if key is not None:
        if key not in groups:
            known = ", ".join(repr(g) for g in sorted(groups)) or "none"
            raise ConversionError(
                f"{where}: no tensors under {key!r}; tensor groups in this checkpoint: {known}"
            )
        return key
    scores = {group: len(set(names) & set(expected)) for group, names in groups.items()}
    best = max(scores.values(), default=0)
    if best == 0:
        known = ", ".join(repr(g) for g in sorted(groups)[:8]) or "none"
        raise ConversionError(
            f"{where}: no group of tensors has this model's names (groups: {known}); check --config, "
            "or say where the model's state dict is with --key"
        )
    winners = sorted(group for group, score in scores.items() if score == best)
    if len(winners) > 1:
        raise ConversionError(
            f"{where}: several tensor groups look like this model ({', '.join(map(repr, winners))}); "
            "choose one with --key"
        )
    return winners[0]


def convert(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    config: dict[str, Any],
    key: str | None = None,
    release: str | None = None,
) -> DcpConvertReport:
    """Write the model tensors of DCP checkpoint `src` as the stamped safetensors file `out`.

    `config` is the spec (the xtf core's, or with `release` that x-transformers release's constructor
    call); `key` names the container of the model's state dict (default: the group whose names fit).
    """
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner

    from xtf_core.checkpoint.io import dtype_code, tensor_bytes, write_all
    from xtf_core.checkpoint.writer import safetensors_file
    from xtf_core.errors import XtfError

    folder, where = Path(src), str(src)
    out = Path(out)
    if not is_dcp_checkpoint(folder):
        raise ConversionError(f"{where}: not a DCP checkpoint folder (no {METADATA_FILE})")
    if out.exists():
        raise ConversionError(f"output {out} already exists; choose another -o path or remove it first")
    if release is not None:
        from .releases import LINEAGE, check_release

        stamp = check_release(release)
        what = f"{LINEAGE} {stamp.version}"
    else:
        stamp, what = current_stamp(), f"xtf {current_stamp().version}"
    metadata = read_metadata(folder)
    try:
        expected = layout_at(stamp, config)
    except XtfError as exc:
        raise ConversionError(f"{where}: the config cannot be read as {what}: {exc}") from exc
    groups = model_groups(metadata)
    group = _choose_group(groups, expected, key, where)
    keys = groups[group]
    entries = {name: metadata.state_dict_metadata[dcp_key] for name, dcp_key in keys.items()}
    compare_layouts({name: tuple(entry.size) for name, entry in entries.items()}, expected, where, what)
    names = sorted(entries)
    layout = [(name, dtype_code(entries[name].properties.dtype), tuple(entries[name].size)) for name in names]
    reader = _reader(folder)
    with safetensors_file(out, layout, stamped_metadata({}, stamp, config)) as fd:
        for batch in _batches(layout):
            state = {
                keys[name]: torch.empty(shape, dtype=entries[name].properties.dtype)
                for name, _, shape in batch
            }
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                    dcp.load(
                        state,
                        storage_reader=reader,
                        planner=DefaultLoadPlanner(allow_partial_load=True),
                        no_dist=True,
                    )
            except BaseException as exc:
                if type(exc).__name__ != "CheckpointException":
                    raise
                failures = getattr(exc, "failures", {}) or {}
                cause = next(iter(failures.values()), (exc,))[0]
                raise ConversionError(
                    f"{where}: cannot read the model tensors ({type(cause).__name__}: {cause})"
                ) from exc
            for name, _, _ in batch:
                write_all(fd, tensor_bytes(state[keys[name]]))
    return DcpConvertReport(
        source=where,
        output=str(out),
        stamp=str(stamp),
        tensors=len(names),
        state_dict_at=group or "<top level>",
        skipped=sum(len(g) for other, g in groups.items() if other != group),
    )


def _batches(layout: list[tuple[str, str, tuple[int, ...]]]):
    import math

    from xtf_core.checkpoint.header import DTYPE_SIZES

    batch, size = [], 0
    for item in layout:
        nbytes = math.prod(item[2]) * DTYPE_SIZES[item[1]]
        if batch and size + nbytes > BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += nbytes
    if batch:
        yield batch
