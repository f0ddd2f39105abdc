"""The stamp: which library release wrote a checkpoint, and the metadata keys that carry it.

A stamp is (lineage, version). Lineages are ordered: every `x-transformers` release precedes every `xtf`
release, so converted legacy checkpoints sit at the old end of one ordered line. Stamps read and print as
`lineage==version` (e.g. `xtf==0.1.0`, `x-transformers==1.26.0`). No torch here.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from xtf_core.errors import CheckpointFormatError, VersionError

LINEAGES = ("x-transformers", "xtf")
DEFAULT_LINEAGE = "xtf"
STAMP_FORMAT = "1"

KEY_FORMAT = "format"
KEY_STAMP_FORMAT = "xtf.format"
KEY_LINEAGE = "xtf.lineage"
KEY_VERSION = "xtf.version"
KEY_SPEC = "xtf.spec"
KEY_TIED = "xtf.tied"
KEY_FINGERPRINT = "xtf.fingerprint"
KEY_MIGRATIONS = "xtf.migrations"
KEY_ORIGIN = "xtf.origin"


@functools.total_ordering
@dataclass(frozen=True, eq=False)
class Stamp:
    """A release within a lineage; versions compare as PEP 440 (`0.1` and `0.1.0` are the same stamp)."""

    lineage: str
    version: str

    def __post_init__(self) -> None:
        if self.lineage not in LINEAGES:
            raise VersionError(f"unknown lineage {self.lineage!r} in stamp; known: {', '.join(LINEAGES)}")
        try:
            normalised = str(Version(self.version))
        except InvalidVersion as exc:
            raise VersionError(
                f"{self.version!r} is not a PEP 440 version (stamp {self.lineage}=={self.version})"
            ) from exc
        object.__setattr__(self, "version", normalised)

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
    """The one JSON spelling xtf writes: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def is_stamped(metadata: Mapping[str, str]) -> bool:
    return any(key.startswith("xtf.") for key in metadata)


def read_stamp(metadata: Mapping[str, str], where: str) -> Stamp:
    """The stamp in a file's metadata; `where` names the file in error messages."""
    stamp_format = metadata.get(KEY_STAMP_FORMAT, STAMP_FORMAT)
    if stamp_format != STAMP_FORMAT:
        raise CheckpointFormatError(
            f"{where}: {KEY_STAMP_FORMAT}={stamp_format!r} is a stamp format this xtf does not know "
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
    """The architecture spec: a JSON object with a string "class"."""
    if KEY_SPEC not in metadata:
        raise CheckpointFormatError(
            f"{where}: no {KEY_SPEC} in metadata; the file does not say what it builds"
        )
    spec = _read_json(metadata, KEY_SPEC, where)
    if not isinstance(spec, dict) or not isinstance(spec.get("class"), str):
        raise CheckpointFormatError(f'{where}: {KEY_SPEC} must be a JSON object with a string "class"')
    return spec


def read_migrations(metadata: Mapping[str, str], where: str) -> list[dict]:
    applied = _read_json(metadata, KEY_MIGRATIONS, where, default=[])
    if not isinstance(applied, list) or not all(isinstance(item, dict) for item in applied):
        raise CheckpointFormatError(f"{where}: {KEY_MIGRATIONS} must be a JSON list of objects")
    return applied


def read_origin(metadata: Mapping[str, str], where: str) -> dict | None:
    origin = _read_json(metadata, KEY_ORIGIN, where, default=None)
    if origin is not None and not isinstance(origin, dict):
        raise CheckpointFormatError(f"{where}: {KEY_ORIGIN} must be a JSON object")
    return origin


def read_tied(metadata: Mapping[str, str], where: str) -> dict[str, str]:
    tied = _read_json(metadata, KEY_TIED, where, default={})
    if not isinstance(tied, dict) or not all(isinstance(v, str) for v in tied.values()):
        raise CheckpointFormatError(f"{where}: {KEY_TIED} must be a JSON object of tensor names")
    return tied


def _read_json(metadata: Mapping[str, str], key: str, where: str, default: object = None) -> object:
    if key not in metadata:
        return default
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as exc:
        raise CheckpointFormatError(f"{where}: {key} is not valid JSON ({exc})") from exc


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
