"""The stamp: which library release wrote a checkpoint, and the metadata keys that carry it.

A stamp is (lineage, version). Lineages are ordered: every `x-transformers` release precedes every `xtf`
release, so converted legacy checkpoints sit at the old end of one ordered line. Stamps read and print as
`lineage==version` (e.g. `xtf==0.1.0`, `x-transformers==1.26.0`). No torch here.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence

from packaging.version import InvalidVersion, Version

from xtf_core.checkpoint.header import CheckpointHeaders, check_shard_stamps, strict_json
from xtf_core.checkpoint.keys import (  # the keys live below the header reader, which checks them too
    DEFAULT_LINEAGE,
    KEY_FINGERPRINT,
    KEY_FORMAT,
    KEY_IGNORED,
    KEY_LINEAGE,
    KEY_MIGRATIONS,
    KEY_ORIGIN,
    KEY_SPEC,
    KEY_STAMP_FORMAT,
    KEY_TIED,
    KEY_VERSION,
    LINEAGES,
    MAX_VERSION_CHARS,
    STAMP_FORMAT,
)
from xtf_core.errors import CheckpointFormatError, VersionError, bounded

FINGERPRINT_FORMAT = 1  # the fingerprint record version whose fields read_fingerprint checks
MAX_KEY_CHARS = 100
MAX_SPEC_BYTES = 1024 * 1024
MAX_SPEC_DEPTH = 32
MAX_SPEC_INT = 2**53  # no size, count or seed in a spec is larger; bigger ints cannot come from a real model
MAX_CLASS_CHARS = 100
MAX_METADATA_JSON_BYTES = 16 * 1024 * 1024
MAX_METADATA_JSON_DEPTH = 32


@functools.total_ordering
class Stamp:
    """A release within a lineage; versions compare as PEP 440 (`0.1` and `0.1.0` are the same stamp).

    Immutable. A plain class rather than a dataclass, so that header-only tools do not import `dataclasses`.
    """

    __slots__ = ("lineage", "version")
    lineage: str
    version: str

    def __init__(self, lineage: str, version: str) -> None:
        if lineage not in LINEAGES:
            raise VersionError(f"unknown lineage {bounded(lineage)} in stamp; known: {', '.join(LINEAGES)}")
        if not isinstance(version, str) or len(version) > MAX_VERSION_CHARS:
            raise VersionError(f"{bounded(version)} is not a PEP 440 version of the {lineage} lineage")
        try:
            normalised = str(Version(version))
        except InvalidVersion as exc:
            raise VersionError(
                f"{bounded(version)} is not a PEP 440 version (stamp {lineage}=={bounded(version)})"
            ) from exc
        object.__setattr__(self, "lineage", lineage)
        object.__setattr__(self, "version", normalised)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Stamp is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a Stamp is immutable (cannot delete {name!r})")

    def __reduce__(self) -> tuple[type[Stamp], tuple[str, str]]:
        return Stamp, (self.lineage, self.version)

    def __repr__(self) -> str:
        return f"Stamp(lineage={self.lineage!r}, version={self.version!r})"

    @classmethod
    def parse(cls, text: str) -> Stamp:
        """`lineage==version`, or a bare version meaning the xtf lineage."""
        lineage, sep, version = text.strip().partition("==")
        if not sep:
            lineage, version = DEFAULT_LINEAGE, lineage
        return cls(lineage.strip(), version.strip())

    @classmethod
    def coerce(cls, value: Stamp | str) -> Stamp:
        return value if isinstance(value, Stamp) else cls.parse(value)

    @property
    def sort_key(self) -> tuple[int, Version]:
        return LINEAGES.index(self.lineage), Version(self.version)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Stamp):
            return NotImplemented
        return self.sort_key == other.sort_key

    def __hash__(self) -> int:
        return hash(self.sort_key)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Stamp):
            return NotImplemented
        return self.sort_key < other.sort_key

    def __str__(self) -> str:
        return f"{self.lineage}=={self.version}"

    def to_json(self) -> dict[str, str]:
        return {"lineage": self.lineage, "version": self.version}


def current_stamp() -> Stamp:
    """The stamp of the installed xtf release."""
    import xtf_core

    return Stamp(DEFAULT_LINEAGE, xtf_core.__version__)


def canonical_json(value: object) -> str:
    """The one JSON spelling xtf writes (specs, fingerprints, stamps): sorted keys, no spaces, finite
    numbers only (a reader refuses NaN and Infinity, so nothing writes them)."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise CheckpointFormatError(
            f"cannot store a non-finite number in checkpoint metadata ({exc})"
        ) from exc


def read_stamp(metadata: Mapping[str, str], where: str) -> Stamp:
    """The stamp in a file's metadata; `where` names the file in error messages."""
    stamp_format = metadata.get(KEY_STAMP_FORMAT, STAMP_FORMAT)
    if stamp_format != STAMP_FORMAT:
        raise CheckpointFormatError(
            f"{where}: {KEY_STAMP_FORMAT}={bounded(stamp_format)} is a stamp format this xtf does not know "
            f"(it reads {STAMP_FORMAT!r}); upgrade xtf"
        )
    if KEY_VERSION not in metadata:
        raise CheckpointFormatError(
            f"{where}: no {KEY_VERSION} in metadata, so the file is not a stamped xtf checkpoint; "
            "convert it first (xtf convert)"
        )
    try:
        return Stamp(metadata.get(KEY_LINEAGE, DEFAULT_LINEAGE), metadata[KEY_VERSION])
    except VersionError as exc:
        raise CheckpointFormatError(f"{where}: bad stamp: {exc}") from exc


def read_spec(metadata: Mapping[str, str], where: str) -> dict:
    """The architecture spec: a JSON object with a string "class", bounded in size, depth and values.

    Strict JSON (no duplicate keys, no NaN), at most MAX_SPEC_BYTES and MAX_SPEC_DEPTH levels; every
    "class" a short string; every integer within MAX_SPEC_INT. Whether the sizes fit the file's tensors is
    checked before a model is built (`xtf_core.loading.check_spec_fits`).
    """
    if KEY_SPEC not in metadata:
        raise CheckpointFormatError(
            f"{where}: no {KEY_SPEC} in metadata; the file does not say what it builds"
        )
    spec = _read_json(metadata, KEY_SPEC, where, max_bytes=MAX_SPEC_BYTES, max_depth=MAX_SPEC_DEPTH)
    if not isinstance(spec, dict) or not isinstance(spec.get("class"), str):
        raise CheckpointFormatError(f'{where}: {KEY_SPEC} must be a JSON object with a string "class"')
    _check_spec_values(spec, where)
    return spec


def _check_spec_values(spec: dict, where: str) -> None:
    """Every class name short, every integer bounded (walked without recursion)."""
    stack: list[tuple[str, object]] = [("spec", spec)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            name = value.get("class")
            if name is not None and (not isinstance(name, str) or len(name) > MAX_CLASS_CHARS):
                raise CheckpointFormatError(
                    f"{where}: {KEY_SPEC} at {path}: {bounded(name)} is not a class name"
                )
            long = next((key for key in value if len(key) > MAX_KEY_CHARS), None)
            if long is not None:
                raise CheckpointFormatError(
                    f"{where}: {KEY_SPEC} at {path}: {bounded(long, 60)} is not an option name"
                )
            stack.extend((f"{path}.{key}", item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SPEC_INT:
            raise CheckpointFormatError(
                f"{where}: {KEY_SPEC} at {path} is {bounded(value)}, beyond any real model (limit 2**53)"
            )


def read_checkpoint_stamp(headers: CheckpointHeaders) -> tuple[Stamp, dict]:
    """The stamp and spec of a checkpoint (one file or a sharded folder): the one reader every verb and
    `load` use. Shards were already checked to agree with the index by `read_checkpoint_headers`."""
    check_shard_stamps(headers)
    where = str(headers.path)
    return read_stamp(headers.metadata, where), read_spec(headers.metadata, where)


def read_migrations(metadata: Mapping[str, str], where: str) -> list[dict]:
    applied = _read_json(metadata, KEY_MIGRATIONS, where, default=[])
    if not isinstance(applied, list) or not all(isinstance(item, dict) for item in applied):
        raise CheckpointFormatError(f"{where}: {KEY_MIGRATIONS} must be a JSON list of objects")
    return applied


def read_origin(metadata: Mapping[str, str], where: str) -> dict | None:
    """The first stamp a file ever had: a JSON object with string "lineage" and "version", or None."""
    origin = _read_json(metadata, KEY_ORIGIN, where, default=None)
    if origin is not None and not (
        isinstance(origin, dict)
        and isinstance(origin.get("lineage"), str)
        and isinstance(origin.get("version"), str)
    ):
        raise CheckpointFormatError(
            f'{where}: {KEY_ORIGIN} must be a JSON object with string "lineage" and "version"'
        )
    return origin


def read_ignored(metadata: Mapping[str, str]) -> list[dict] | str | None:
    """The options a converted release ignored, as recorded (`None` when not recorded; raw text if not JSON).

    Informational only (nothing is built from it), so a value that is not JSON is shown as it is."""
    if KEY_IGNORED not in metadata:
        return None
    try:
        return json.loads(metadata[KEY_IGNORED])
    except json.JSONDecodeError:
        return metadata[KEY_IGNORED]


def describe_ignored(ignored: list[dict] | str) -> str:
    """`attn_layers.dim_head=64, attn_layers.flash_attn=True`: recorded ignored options, for people."""
    items = ignored if isinstance(ignored, list) else []
    text = ", ".join(
        f"{item.get('at') + '.' if item.get('at') else ''}{item.get('option')}={item.get('value')!r}"
        for item in items
        if isinstance(item, dict)
    )
    return text or str(ignored)


def read_fingerprint(metadata: Mapping[str, str], where: str) -> dict | None:
    """The stored behaviour fingerprint, or None. A version-1 record must hold an integer list "shape",
    a number list "samples" and a number "abs_sum"; other versions are left for the verifier to refuse."""
    stored = _read_json(metadata, KEY_FINGERPRINT, where, default=None)
    if stored is None:
        return None
    if not isinstance(stored, dict):
        raise CheckpointFormatError(f"{where}: {KEY_FINGERPRINT} must be a JSON object")
    if stored.get("version") == FINGERPRINT_FORMAT:
        shape, samples = stored.get("shape"), stored.get("samples")
        if not (
            isinstance(shape, list)
            and all(type(size) is int for size in shape)
            and isinstance(samples, list)
            and all(_is_number(value) for value in samples)
            and _is_number(stored.get("abs_sum"))
            and isinstance(stored.get("dtype", "float32"), str)
        ):
            raise CheckpointFormatError(
                f'{where}: {KEY_FINGERPRINT} must hold an integer list "shape", a number list "samples" and a '
                'number "abs_sum" (see docs/checkpoint-format.md)'
            )
    return stored


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_tied(metadata: Mapping[str, str], where: str) -> dict[str, str]:
    tied = _read_json(metadata, KEY_TIED, where, default={})
    if not isinstance(tied, dict) or not all(isinstance(v, str) for v in tied.values()):
        raise CheckpointFormatError(f"{where}: {KEY_TIED} must be a JSON object of tensor names")
    return tied


def _read_json(
    metadata: Mapping[str, str],
    key: str,
    where: str,
    default: object = None,
    *,
    max_bytes: int = MAX_METADATA_JSON_BYTES,
    max_depth: int = MAX_METADATA_JSON_DEPTH,
) -> object:
    if key not in metadata:
        return default
    value = metadata[key]
    if not isinstance(value, str):
        raise CheckpointFormatError(f"{where}: {key} must be a JSON string")
    return strict_json(value, f"{where}: {key}", max_bytes=max_bytes, max_depth=max_depth)


def stamped_metadata(
    previous: Mapping[str, str],
    stamp: Stamp,
    spec: Mapping,
    applied: Sequence[Mapping[str, str]] = (),
    tied: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Metadata for a file written at `stamp`: keeps every other key of `previous` (the fingerprint
    included), appends `applied` to `xtf.migrations`, and sets `xtf.origin` once (the first stamp ever)."""
    metadata = dict(previous)
    where = "metadata"
    if KEY_VERSION in previous:
        first = read_origin(previous, where) or read_stamp(previous, where).to_json()
    else:
        first = stamp.to_json()
    history = read_migrations(previous, where) + [dict(item) for item in applied]
    metadata.update(
        {
            KEY_FORMAT: "pt",
            KEY_STAMP_FORMAT: STAMP_FORMAT,
            KEY_LINEAGE: stamp.lineage,
            KEY_VERSION: stamp.version,
            KEY_SPEC: canonical_json(spec),
            KEY_ORIGIN: canonical_json(first),
        }
    )
    if history:
        metadata[KEY_MIGRATIONS] = canonical_json(history)
    if tied is not None:
        if tied:
            metadata[KEY_TIED] = canonical_json(dict(tied))
        else:
            metadata.pop(KEY_TIED, None)
    return metadata
