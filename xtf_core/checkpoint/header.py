"""Read, validate and encode safetensors headers and sharded index files, with the standard library only.

Nothing here imports torch or safetensors, so `xtf inspect` and migration planning stay fast: a header is
read with two small reads no matter how large the file is. Readers check sizes and offsets before trusting
anything (see docs/checkpoint-format.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from xtf_core.checkpoint.keys import (
    DEFAULT_LINEAGE,
    KEY_LINEAGE,
    KEY_STAMP_FORMAT,
    KEY_VERSION,
    MAX_VERSION_CHARS,
    STAMP_FORMAT,
    is_stamped,
)
from xtf_core.errors import CheckpointFormatError, XtfError, bounded, cut

INDEX_FILENAME = "model.safetensors.index.json"
SINGLE_FILENAME = "model.safetensors"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
MAX_HEADER_DEPTH = 4  # object -> tensor entry -> shape list; anything deeper is not a safetensors header
MAX_INDEX_BYTES = 64 * 1024 * 1024
MAX_INDEX_DEPTH = 4
MAX_RANK = 64
MAX_ELEMENTS = 2**63 - 1  # product of the non-zero sizes: torch's strides must fit in int64
MAX_JSON_INT_DIGITS = 24  # JSON integers longer than this are refused before Python converts them
HEADER_ALIGNMENT = 8

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


# Value types are named tuples, not dataclasses: importing `dataclasses` (which imports `inspect`) would
# cost the header-only `xtf inspect` a sixth of its start-up.
class TensorEntry(NamedTuple):
    """One tensor of a safetensors file: dtype, shape and its byte range inside the data region."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class Header(NamedTuple):
    """A validated safetensors header. `tensors` is ordered by data offset."""

    path: Path
    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]
    data_start: int
    file_size: int

    def file_offset(self, entry: TensorEntry) -> int:
        """Absolute offset of a tensor's first byte in the file."""
        return self.data_start + entry.begin

    @property
    def data_bytes(self) -> int:
        return sum(entry.nbytes for entry in self.tensors.values())


class ShardedIndex(NamedTuple):
    """A `model.safetensors.index.json`: shared metadata and which shard holds each tensor."""

    path: Path
    metadata: dict[str, object]
    weight_map: dict[str, str]

    @property
    def shard_files(self) -> list[str]:
        return sorted(set(self.weight_map.values()))


class CheckpointHeaders(NamedTuple):
    """Every header of a checkpoint: one file, or a sharded folder with its index."""

    path: Path
    shards: dict[str, Header]
    index: ShardedIndex | None = None

    @property
    def is_sharded(self) -> bool:
        return self.index is not None

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def metadata(self) -> dict[str, str]:
        """The checkpoint's metadata: the index's string values for a sharded folder, else the file's."""
        if self.index is None:
            return next(iter(self.shards.values())).metadata
        return {key: value for key, value in self.index.metadata.items() if isinstance(value, str)}

    def entries(self) -> Iterable[tuple[str, TensorEntry]]:
        """(shard file name, entry) for every tensor, shard by shard in data order."""
        for shard_name, header in self.shards.items():
            for entry in header.tensors.values():
                yield shard_name, entry

    @property
    def tensor_count(self) -> int:
        return sum(len(header.tensors) for header in self.shards.values())

    @property
    def data_bytes(self) -> int:
        return sum(header.data_bytes for header in self.shards.values())


def open_regular(path: Path, what: str = "checkpoint file") -> tuple[int, int]:
    """(fd, size) of `path` opened for reading, refusing anything but a regular file before it can block.

    A FIFO, a character device such as /dev/zero, a socket or a folder is refused from its `stat`; the
    open itself is non-blocking and the descriptor is checked again, so a file swapped in between cannot
    hang the reader either.
    """
    try:
        kind = _file_kind(os.stat(path).st_mode)
        if kind is not None:
            raise CheckpointFormatError(f"{path}: the {what} is {kind}, not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise CheckpointFormatError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        info = os.fstat(fd)
        kind = _file_kind(info.st_mode)
        if kind is not None:
            raise CheckpointFormatError(f"{path}: the {what} is {kind}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def _file_kind(mode: int) -> str | None:
    """None for a regular file, else what the file is, in words."""
    if stat.S_ISREG(mode):
        return None
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _pread_exactly(fd: int, nbytes: int, offset: int) -> bytes:
    chunks, done = [], 0
    while done < nbytes:
        chunk = os.pread(fd, nbytes - done, offset + done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def read_header(path: str | os.PathLike) -> Header:
    """Read and validate the header of one safetensors file (rules: docs/checkpoint-format.md)."""
    path = Path(path)
    fd, file_size = open_regular(path)
    try:
        if file_size < 8:
            raise CheckpointFormatError(f"{path}: {file_size} bytes is too short for a safetensors file")
        (header_size,) = struct.unpack("<Q", _pread_exactly(fd, 8, 0))
        if header_size > file_size - 8:
            raise CheckpointFormatError(
                f"{path}: header size {header_size} is larger than the file ({file_size} bytes); "
                "the file is truncated or not safetensors"
            )
        if header_size > MAX_HEADER_BYTES:
            raise CheckpointFormatError(f"{path}: header size {header_size} exceeds {MAX_HEADER_BYTES} bytes")
        raw = _pread_exactly(fd, header_size, 8)
    except OSError as exc:
        raise CheckpointFormatError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
    if len(raw) != header_size:
        raise CheckpointFormatError(f"{path}: the file shrank while its header was read")
    if not raw.startswith(b"{"):
        raise CheckpointFormatError(
            f"{path}: header is not a JSON object: it does not start with '{{' (the header size "
            f"{header_size} is wrong, or the file is not safetensors)"
        )
    if not raw.rstrip(b" ").endswith(b"}"):
        raise CheckpointFormatError(
            f"{path}: header JSON of {header_size} bytes does not end with '}}' and space padding; the "
            "header size is wrong or the header is corrupt"
        )
    document, key_count = _header_json(raw, f"{path}: header")
    data_start = 8 + header_size
    metadata, tensors = _parse_header_document(path, document, file_size - data_start)
    if key_count != len(document) + len(metadata) + len(_ENTRY_KEYS) * len(tensors):  # type: ignore[arg-type]
        # a key seen twice (or one the quick count cannot see): the exact parser names it, or clears it
        strict_json(raw, f"{path}: header", max_bytes=MAX_HEADER_BYTES, max_depth=MAX_HEADER_DEPTH)
    return Header(path=path, metadata=metadata, tensors=tensors, data_start=data_start, file_size=file_size)


def strict_json(
    raw: bytes | str,
    what: str,
    *,
    max_bytes: int,
    max_depth: int,
    error: type[XtfError] = CheckpointFormatError,
) -> object:
    """Parse JSON that came from a file, refusing what a lenient parser would accept.

    Refused: more than `max_bytes` bytes, nesting deeper than `max_depth` (checked before parsing, so a
    document nested 100,000 levels deep is one error, not a RecursionError), invalid UTF-8, duplicate keys
    in any object, the non-standard literals NaN/Infinity/-Infinity, numbers that overflow to infinity,
    and integers of more than MAX_JSON_INT_DIGITS digits. `what` starts every message.
    """
    if len(raw) > max_bytes:
        raise error(f"{what} is {len(raw)} bytes, more than the {max_bytes} allowed")
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    else:
        text = raw
    depth = _json_depth(text, max_depth)
    if depth > max_depth:
        raise error(f"{what} is nested deeper than {max_depth} levels")
    try:
        return json.loads(
            text,
            object_pairs_hook=_unique_object,
            parse_constant=_refuse_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except _JsonRefusal as exc:
        raise error(f"{what} is not strict JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise error(f"{what} is not valid JSON ({bounded(str(exc))})") from None


def _header_json(raw: bytes, what: str) -> tuple[object, int | None]:
    """A header's JSON, parsed at C speed: (document, how many keys its text holds, or None if unsure).

    Refused as in `strict_json`: invalid UTF-8, NaN/Infinity, numbers overflowing to infinity, nesting
    Python cannot parse. Duplicate keys are found by counting: outside strings every `"` followed by `:`
    closes a key, so the count equals the keys parsed unless one repeats (a key ending in a backslash
    makes the count unsure: None). The caller compares it with what it parsed.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointFormatError(f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        document = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _JsonRefusal as exc:
        raise CheckpointFormatError(f"{what} is not strict JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CheckpointFormatError(
            f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise CheckpointFormatError(f"{what} is nested deeper than {MAX_HEADER_DEPTH} levels") from None
    except ValueError as exc:
        raise CheckpointFormatError(f"{what} is not valid JSON ({bounded(str(exc))})") from None
    if '\\\\"' in text:
        return document, None
    # `":` closes a key outside strings; inside them a quote is escaped (`\\":`, subtracted). A key written
    # with spaces before its colon is not counted: the exact parser then runs (slower, still right).
    return document, text.count('":') - text.count('\\":')


class _JsonRefusal(ValueError):
    """Raised by the strict parser's hooks; turned into the caller's error class."""


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_JSON_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _json_depth(text: str, limit: int) -> int:
    """How deeply `text` nests arrays and objects, counting no further than `limit + 1`."""
    if text.count("[") + text.count("{") <= limit:
        return limit
    brackets = _JSON_NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    depth = 0
    for char in brackets:
        if char in "[{":
            depth += 1
            if depth > limit:
                return depth
        else:
            depth -= 1
    return 0


def _unique_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _JsonRefusal(f"key {bounded(key)} appears more than once in one object")
            seen.add(key)
    return result


def _refuse_constant(name: str) -> object:
    raise _JsonRefusal(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise _JsonRefusal(f"an integer of {len(text)} digits is too long")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _JsonRefusal(f"the number {bounded(text)} overflows to infinity")
    return value


def _parse_header_document(
    path: Path, document: object, data_size: int
) -> tuple[dict[str, str], dict[str, TensorEntry]]:
    if not isinstance(document, dict):
        raise CheckpointFormatError(f"{path}: header JSON must be an object")
    metadata = document.get("__metadata__")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise CheckpointFormatError(f"{path}: __metadata__ must map strings to strings (text values only)")
    entries = [_parse_entry(path, name, raw) for name, raw in document.items() if name != "__metadata__"]
    entries.sort(key=lambda entry: (entry.begin, entry.end))
    previous_end, previous_name = 0, None
    for entry in entries:
        if entry.end > data_size:
            raise CheckpointFormatError(
                f"{path}: tensor {bounded(entry.name)} data_offsets [{entry.begin}, {entry.end}] run past the "
                f"data region ({data_size} bytes); the file is truncated or corrupt"
            )
        if entry.begin < previous_end:
            raise CheckpointFormatError(
                f"{path}: tensor {bounded(entry.name)} data overlaps tensor {bounded(previous_name)}; "
                "the header is corrupt"
            )
        if entry.begin > previous_end:
            after = f"after tensor {bounded(previous_name)}" if previous_name is not None else "at the start"
            raise CheckpointFormatError(
                f"{path}: {entry.begin - previous_end} bytes of the data region {after} belong to no "
                f"tensor (tensor {bounded(entry.name)} starts at {entry.begin}); the header is corrupt"
            )
        previous_end, previous_name = entry.end, entry.name
    if previous_end != data_size:
        raise CheckpointFormatError(
            f"{path}: {data_size - previous_end} trailing bytes after the last tensor's data belong to no "
            "tensor; the file is corrupt or the header size is wrong"
        )
    return dict(metadata), {entry.name: entry for entry in entries}


_ENTRY_KEYS = frozenset(("dtype", "shape", "data_offsets"))
_INT_ONLY = frozenset((int,))


def _parse_entry(path: Path, name: str, raw: object) -> TensorEntry:
    """One tensor entry, checked with C-level operations only on the common path (headers can hold 100k)."""

    def where() -> str:
        return f"{path}: tensor {bounded(name)}"

    if type(raw) is not dict or raw.keys() != _ENTRY_KEYS:
        raise CheckpointFormatError(
            f"{where()}: entry must be an object with exactly dtype, shape, data_offsets"
        )
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if type(dtype) is not str or dtype not in DTYPE_SIZES:
        raise CheckpointFormatError(
            f"{where()}: unknown dtype {bounded(dtype)} (known: {', '.join(DTYPE_SIZES)})"
        )
    if (
        type(shape) is not list
        or len(shape) > MAX_RANK
        or not set(map(type, shape)) <= _INT_ONLY
        or min(shape, default=0) < 0
    ):
        raise CheckpointFormatError(
            f"{where()}: shape must be a list of at most {MAX_RANK} non-negative integers, got {bounded(shape)}"
        )
    elements = math.prod(shape)
    if elements > MAX_ELEMENTS or (not elements and math.prod(size for size in shape if size) > MAX_ELEMENTS):
        raise CheckpointFormatError(
            f"{where()}: shape {bounded(shape)} has more elements than a tensor can index (2**63)"
        )
    if (
        type(offsets) is not list
        or len(offsets) != 2
        or type(offsets[0]) is not int
        or type(offsets[1]) is not int
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointFormatError(
            f"{where()}: data_offsets must be [begin, end] with 0 <= begin <= end, got {bounded(offsets)}"
        )
    begin, end = offsets
    expected = elements * DTYPE_SIZES[dtype]
    if end - begin != expected:
        raise CheckpointFormatError(
            f"{where()}: data_offsets span {end - begin} bytes but {dtype}{bounded(shape)} needs {expected}"
        )
    return TensorEntry(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def read_index(path: str | os.PathLike) -> ShardedIndex:
    """Read and validate a sharded checkpoint's index file (the shards themselves are not opened)."""
    path = Path(path)
    fd, size = open_regular(path, "index file")
    try:
        if size > MAX_INDEX_BYTES:
            raise CheckpointFormatError(
                f"{path}: index is {size} bytes, more than the {MAX_INDEX_BYTES} allowed"
            )
        raw = _pread_exactly(fd, size, 0)
    except OSError as exc:
        raise CheckpointFormatError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
    document = strict_json(raw, f"{path}: index", max_bytes=MAX_INDEX_BYTES, max_depth=MAX_INDEX_DEPTH)
    if not isinstance(document, dict):
        raise CheckpointFormatError(f"{path}: index must be a JSON object with metadata and weight_map")
    metadata = document.get("metadata", {})
    weight_map = document.get("weight_map")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        value is None or isinstance(value, (str, int, float)) for value in metadata.values()
    ):
        raise CheckpointFormatError(f"{path}: index metadata must be an object of plain values (no nesting)")
    odd = [key for key, value in metadata.items() if key.startswith("xtf.") and not isinstance(value, str)]
    if odd:
        raise CheckpointFormatError(f"{path}: index metadata {bounded(odd[0])} must be a string")
    if (
        not isinstance(weight_map, dict)
        or not weight_map
        or not all(isinstance(value, str) for value in weight_map.values())
    ):
        raise CheckpointFormatError(f"{path}: index weight_map must map tensor names to shard file names")
    for shard in set(weight_map.values()):
        if Path(shard).name != shard or shard in ("", ".", "..") or len(shard) > 255 or "\0" in shard:
            raise CheckpointFormatError(
                f"{path}: shard {bounded(shard)} must be a file name in the index's folder"
            )
        if shard == path.name:
            raise CheckpointFormatError(f"{path}: the index names itself as a shard")
    return ShardedIndex(path=path, metadata=dict(metadata), weight_map=dict(weight_map))


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """The file to open for `path`: a .safetensors file, an index file, or a folder holding either.

    Only `stat` is used here; whatever is returned is opened by `open_regular`, which refuses anything that
    is not a regular file.
    """
    path = Path(path)
    if path.is_dir():
        for candidate in (path / INDEX_FILENAME, path / SINGLE_FILENAME):
            if candidate.exists():
                return candidate
        raise CheckpointFormatError(f"{path}: folder holds neither {INDEX_FILENAME} nor {SINGLE_FILENAME}")
    if not path.exists():
        raise CheckpointFormatError(f"{path}: no such file or folder")
    return path


def is_index_path(path: Path) -> bool:
    return path.name.endswith(".index.json")


def read_checkpoint_headers(path: str | os.PathLike) -> CheckpointHeaders:
    """Open a checkpoint's headers: one file, or every shard named by an index (checked against it).

    A sharded folder whose shards carry different stamps (or one that differs from the index's) is refused
    here, so every reader of a checkpoint refuses it the same way.
    """
    path = resolve_checkpoint_path(path)
    if not is_index_path(path):
        header = read_header(path)
        return CheckpointHeaders(path=path, shards={path.name: header})
    index = read_index(path)
    shards = {name: read_header(path.parent / name) for name in index.shard_files}
    problems = []
    for tensor, shard in index.weight_map.items():
        if tensor not in shards[shard].tensors:
            problems.append(f"{bounded(tensor)} is mapped to {bounded(shard)} but that shard lacks it")
    for shard, header in shards.items():
        problems += [
            f"{bounded(tensor)} in {bounded(shard)} is not in weight_map"
            for tensor in header.tensors
            if index.weight_map.get(tensor) != shard
        ]
    if problems:
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointFormatError(
            f"{path}: index disagrees with its shards: " + "; ".join(problems[:5]) + more
        )
    headers = CheckpointHeaders(path=path, shards=shards, index=index)
    check_shard_stamps(headers)
    return headers


def check_shard_stamps(headers: CheckpointHeaders) -> None:
    """A sharded checkpoint's index and every shard must carry the same stamp (or all none).

    Called by `read_checkpoint_headers`, so every verb and `load` refuse a folder mixing shards of
    different checkpoints the same way. The identity is read from the metadata keys alone (no stamp is
    parsed here: that is `stamp.py`'s job, one level up).
    """
    if headers.index is None:
        return
    where = str(headers.path)
    seen: dict[object, list[str]] = {}
    index_metadata = {k: v for k, v in headers.index.metadata.items() if isinstance(v, str)}
    for name, metadata in [(headers.path.name, index_metadata)] + [
        (name, header.metadata) for name, header in headers.shards.items()
    ]:
        seen.setdefault(_stamp_identity(metadata), []).append(name)
    if len(seen) > 1:
        parts = [
            f"{_describe_identity(identity)} in {', '.join(cut(n, 80) for n in names[:3])}"
            + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
            for identity, names in list(seen.items())[:4]
        ]
        raise CheckpointFormatError(
            f"{where}: shards carry different stamps ({'; '.join(parts)}); the folder mixes shards of "
            "different checkpoints"
        )


def _stamp_identity(metadata: Mapping[str, str]) -> object:
    """What must agree between shards: stamp format, lineage and (normalised) version; None if unstamped."""
    if not is_stamped(metadata):
        return None
    from packaging.version import (  # sharded folders only; `xtf inspect` of a file skips it
        InvalidVersion,
        Version,
    )

    version = metadata.get(KEY_VERSION)
    if isinstance(version, str) and len(version) <= MAX_VERSION_CHARS:
        with contextlib.suppress(InvalidVersion):
            version = str(Version(version))
    return (
        metadata.get(KEY_STAMP_FORMAT, STAMP_FORMAT),
        metadata.get(KEY_LINEAGE, DEFAULT_LINEAGE),
        version,
    )


def _describe_identity(identity: object) -> str:
    if identity is None:
        return "no stamp"
    _, lineage, version = identity  # type: ignore[misc]
    return f"{cut(str(lineage), 40)}=={cut(str(version), 40) if version is not None else '(no version)'}"


def encode_header(entries: Iterable[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str]) -> bytes:
    """The bytes that start a safetensors file whose tensors follow in the given order, back to back.

    `entries` holds (name, dtype, shape). Returns the 8-byte little-endian length followed by the JSON
    header, padded with spaces so the data region starts on an 8-byte boundary.
    """
    document: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, dtype, shape in entries:
        if name in document:
            raise CheckpointFormatError(f"tensor name {bounded(name)} appears twice in one file")
        nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
        document[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % HEADER_ALIGNMENT)
    return struct.pack("<Q", len(raw)) + raw
