"""The `xtf.lock` file: a pinned requirement, the stamps it can load, and one digest per locked checkpoint.

Format only (read, write, digest, what a pin implies); enforcement at load time is in `enforce.py`, the
verbs in `verbs.py`, which stamps each release reads in `xtf_core.chain.compat`. No torch here. The format is documented in docs/lockfile.md.

The pin is a PEP 440 requirement on `xtf` or on a release of the legacy `x-transformers` lineage. What it
implies, derived from the installed chain:

- its *target*: the stamp that `xtf migrate --to-lock` writes (the lowest known release the pin allows);
- its *stamps*: which stamped files every allowed release can load. An xtf release loads any stamp from the
  oldest chain node up to itself (older ones are migrated in memory); an x-transformers release loads only
  state dicts in its own layout, so its stamps are the layout's range.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from xtf_core.chain.compat import _between, layout_ranges
from xtf_core.checkpoint.atomic import atomic_file
from xtf_core.checkpoint.header import CheckpointHeaders, read_checkpoint_headers
from xtf_core.checkpoint.stamp import (
    KEY_FINGERPRINT,
    LINEAGES,
    Stamp,
    canonical_json,
    current_stamp,
    read_spec,
    read_stamp,
)
from xtf_core.errors import LockError, XtfError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LOCK_VERSION = 1
LOCK_FILENAME = "xtf.lock"
LOCK_ENV = "XTF_LOCK"
HASH_CHUNK = 8 * 2**20


# ---------------------------------------------------------------------------------------------- the pin


@dataclass(frozen=True)
class Pin:
    """A requirement on one lineage: `xtf==0.1.0`, `xtf>=0.1,<0.2`, `x-transformers==1.26.0`."""

    lineage: str
    specifier: SpecifierSet

    @classmethod
    def parse(cls, text: str) -> Pin:
        """A PEP 440 requirement; a bare version (`0.1.0`) means `xtf==0.1.0`."""
        text = text.strip()
        try:
            Version(text)
            text = f"xtf=={text}"
        except InvalidVersion:
            pass
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            raise LockError(
                f"pin {text!r} is not a PEP 440 requirement (e.g. xtf==0.1.0, x-transformers==1.26.0)"
            ) from exc
        lineage = canonicalize_name(requirement.name)
        if lineage not in LINEAGES:
            raise LockError(f"pin {text!r} names {requirement.name!r}; pin xtf or x-transformers")
        if requirement.extras or requirement.marker or requirement.url:
            raise LockError(f"pin {text!r}: extras, markers and URLs have no meaning in a lockfile")
        if not requirement.specifier:
            raise LockError(f"pin {text!r} has no version specifier; e.g. {lineage}==VERSION")
        return cls(lineage, requirement.specifier)

    @classmethod
    def default(cls) -> Pin:
        return cls.parse(str(current_stamp()))

    def __str__(self) -> str:
        return f"{self.lineage}{self.specifier}"

    def allows(self, stamp: Stamp) -> bool:
        return stamp.lineage == self.lineage and self.specifier.contains(stamp.version, prereleases=True)

    def candidates(self, chain) -> list[Stamp]:
        """The releases this xtf knows of that the pin allows: chain nodes, the installed xtf, and the
        versions the specifier names (so `x-transformers==1.26.0` is known without being a node)."""
        known = {node for node in chain.nodes if node.lineage == self.lineage}
        if self.lineage == chain.installed.lineage:
            known.add(chain.installed)
        for clause in self.specifier:
            if clause.operator in ("==", "===", ">=", "<=", "~="):
                with contextlib.suppress(XtfError):
                    known.add(Stamp(self.lineage, clause.version))
        return sorted(stamp for stamp in known if self.allows(stamp))

    def target(self, chain) -> Stamp:
        """The stamp `xtf migrate --to-lock` writes: the lowest known release the pin allows (every
        allowed xtf release reads it; an x-transformers pin spans one layout)."""
        found = self.candidates(chain)
        if not found:
            raise LockError(f"pin {self} allows no release this xtf knows; run xtf compat for the known ones")
        return found[0]

    def stamps(self, chain) -> list[str]:
        """Stamp ranges (requirement strings) loadable by every release the pin allows."""
        target = self.target(chain)
        ranges = layout_ranges(chain)
        if self.lineage == "xtf":
            lowest = chain.nodes[0]
            return _between(lowest, target)
        layouts = sorted({chain.node_for(stamp) for stamp in self.candidates(chain)})
        if len(layouts) > 1:
            raise LockError(
                f"pin {self} spans {len(layouts)} x-transformers layouts ({', '.join(map(str, layouts))}); "
                "no state dict loads in all of them: pin one release, or a range inside one layout"
            )
        return [ranges[layouts[0]]]


# ------------------------------------------------------------------------------------------- digests


@dataclass(frozen=True)
class FileDigest:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class LockEntry:
    """One locked checkpoint. `path` is relative to the lockfile's folder, with `/` separators. A sharded
    folder lists each of its files (index included); its `sha256` is then the digest of those lines."""

    path: str
    sha256: str
    size: int
    stamp: str
    spec_digest: str
    fingerprint_digest: str | None = None
    files: tuple[FileDigest, ...] = ()


def hash_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in 8 MiB chunks."""
    digest, size = hashlib.sha256(), 0
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
            size += count
    return digest.hexdigest(), size


def combined_digest(files: Sequence[FileDigest]) -> str:
    """The digest of a sharded folder: sha256 over `<sha256>  <name>\\n` for each file, sorted by name."""
    lines = "".join(f"{f.sha256}  {f.name}\n" for f in sorted(files, key=lambda f: f.name))
    return hashlib.sha256(lines.encode()).hexdigest()


def text_digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def checkpoint_key(path: str | os.PathLike | CheckpointHeaders) -> Path:
    """The resolved path a checkpoint is locked under: the file, or the folder of a sharded checkpoint.

    Given headers already read (`OpenedCheckpoint.headers`), nothing is read again."""
    headers = path if isinstance(path, CheckpointHeaders) else read_checkpoint_headers(path)
    return (headers.folder if headers.is_sharded else headers.path).resolve()


def checkpoint_files(headers: CheckpointHeaders) -> list[Path]:
    """The files whose bytes make up a checkpoint, sorted by name (index included for a sharded one)."""
    if not headers.is_sharded:
        return [headers.path]
    return sorted([headers.path, *(header.path for header in headers.shards.values())], key=lambda p: p.name)


def describe_checkpoint(path: str | os.PathLike, root: Path) -> LockEntry:
    """The lock entry for a checkpoint now: its digests, size, stamp, spec and fingerprint digests."""
    headers = read_checkpoint_headers(path)
    where = str(headers.path)
    metadata = headers.metadata
    stamp = read_stamp(metadata, where)
    spec = read_spec(metadata, where)
    fingerprint = None
    if KEY_FINGERPRINT in metadata:
        try:
            fingerprint = text_digest(canonical_json(json.loads(metadata[KEY_FINGERPRINT])))
        except json.JSONDecodeError as exc:
            raise LockError(f"{where}: {KEY_FINGERPRINT} is not valid JSON ({exc})") from exc
    key = (headers.folder if headers.is_sharded else headers.path).resolve()
    relative = Path(os.path.relpath(key, root.resolve())).as_posix()
    digests = []
    for file in checkpoint_files(headers):
        sha, size = hash_file(file)
        digests.append(FileDigest(file.name, sha, size))
    if headers.is_sharded:
        sha, size, files = combined_digest(digests), sum(f.size for f in digests), tuple(digests)
    else:
        sha, size, files = digests[0].sha256, digests[0].size, ()
    return LockEntry(
        path=relative,
        sha256=sha,
        size=size,
        stamp=str(stamp),
        spec_digest=text_digest(canonical_json(spec)),
        fingerprint_digest=fingerprint,
        files=files,
    )


# ------------------------------------------------------------------------------------------ the file


@dataclass
class Lockfile:
    path: Path
    pin: Pin
    target: str
    stamps: list[str]
    entries: dict[str, LockEntry] = field(default_factory=dict)
    # the installed chain when locked: (step id, sha256 of its source), oldest first (none: not recorded)
    chain_steps: list[tuple[str, str]] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.path.resolve().parent

    @classmethod
    def new(cls, path: Path, pin: Pin, chain) -> Lockfile:
        return cls(
            Path(path), pin, str(pin.target(chain)), pin.stamps(chain), chain_steps=_chain_steps(chain)
        )

    def with_pin(self, pin: Pin, chain) -> Lockfile:
        """The same entries under `pin`, with the pin's stamps and the chain as installed now."""
        return replace(
            self,
            pin=pin,
            target=str(pin.target(chain)),
            stamps=pin.stamps(chain),
            chain_steps=_chain_steps(chain),
        )

    def entry_for(self, checkpoint: str | os.PathLike | CheckpointHeaders) -> LockEntry | None:
        """The entry locking `checkpoint` (a file, index or folder, or its headers already read), or None."""
        key = checkpoint_key(checkpoint)
        for entry in self.entries.values():
            if (self.root / entry.path).resolve() == key:
                return entry
        return None

    def location(self, entry: LockEntry) -> Path:
        return self.root / entry.path

    @classmethod
    def read(cls, path: str | os.PathLike) -> Lockfile:
        path = Path(path)
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise LockError(f"{path}: no such lockfile; create it with xtf lock") from exc
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise LockError(f"{path}: not a readable TOML lockfile ({exc})") from exc
        return cls.from_document(path, document)

    @classmethod
    def from_document(cls, path: Path, document: dict) -> Lockfile:
        version = document.get("lock-version")
        if version != LOCK_VERSION:
            raise LockError(
                f"{path}: lock-version {version!r} is not one this xtf reads ({LOCK_VERSION}); "
                + ("upgrade xtf" if isinstance(version, int) and version > LOCK_VERSION else "recreate it")
            )
        pin_table = _table(document, "pin", path)
        pin = Pin.parse(_field(pin_table, "requirement", str, path, "[pin]"))
        target = _field(pin_table, "target", str, path, "[pin]")
        stamps = _field(pin_table, "stamps", list, path, "[pin]")
        if not all(isinstance(s, str) for s in stamps):
            raise LockError(f"{path}: [pin] stamps must be a list of strings")
        for text in stamps:
            try:
                Requirement(text)
            except InvalidRequirement as exc:
                raise LockError(f"{path}: [pin] stamps entry {text!r} is not a requirement") from exc
        entries = {}
        raw_entries = document.get("checkpoint", [])
        if not isinstance(raw_entries, list):
            raise LockError(f"{path}: checkpoint must be an array of tables ([[checkpoint]])")
        for i, raw in enumerate(raw_entries):
            entry = _entry(raw, path, f"[[checkpoint]] #{i + 1}")
            if entry.path in entries:
                raise LockError(f"{path}: {entry.path} is locked twice")
            entries[entry.path] = entry
        return cls(path, pin, target, list(stamps), entries, _chain_table(document, path))

    def render(self) -> str:
        """The lockfile text: fixed key order, entries sorted by path, so it diffs cleanly."""
        lines = [
            "# xtf lockfile, written by `xtf lock`; check with `xtf lock --check`. Format: docs/lockfile.md",
            f"lock-version = {LOCK_VERSION}",
            "",
            "[pin]",
            f"requirement = {_quote(str(self.pin))}",
            f"target = {_quote(self.target)}",
            f"stamps = [{', '.join(_quote(s) for s in self.stamps)}]",
        ]
        if self.chain_steps:
            lines += ["", "[chain]", f'sum = "{chain_total(self.chain_steps)}"', "steps = ["]
            lines += [f"  [{_quote(step_id)}, {_quote(digest)}]," for step_id, digest in self.chain_steps]
            lines.append("]")
        for key in sorted(self.entries):
            entry = self.entries[key]
            lines += [
                "",
                "[[checkpoint]]",
                f"path = {_quote(entry.path)}",
                f'sha256 = "{entry.sha256}"',
                f"size = {entry.size}",
                f"stamp = {_quote(entry.stamp)}",
                f'spec-digest = "{entry.spec_digest}"',
            ]
            if entry.fingerprint_digest:
                lines.append(f'fingerprint-digest = "{entry.fingerprint_digest}"')
            for file in entry.files:
                lines += [
                    "",
                    "[[checkpoint.files]]",
                    f"name = {_quote(file.name)}",
                    f'sha256 = "{file.sha256}"',
                    f"size = {file.size}",
                ]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        """Replace the lockfile atomically (callers that read-modify-write hold `exclusive` around it)."""
        data = self.render().encode("utf-8")
        with atomic_file(self.path) as fd:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]


def _chain_steps(chain) -> list[tuple[str, str]]:
    from xtf_core.chain.digest import chain_sum

    return list(chain_sum(chain).steps)


def chain_total(steps: list[tuple[str, str]]) -> str:
    from xtf_core.chain.digest import ChainSum

    return ChainSum(tuple(steps)).total


def _chain_table(document: dict, path: Path) -> list[tuple[str, str]]:
    """The [chain] table: every step's id and source digest, checked against its own sum."""
    table = document.get("chain")
    if table is None:
        return []
    steps = table.get("steps") if isinstance(table, dict) else None
    if not isinstance(steps, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) for v in pair) for pair in steps
    ):
        raise LockError(f'{path}: [chain] steps must be a list of ["step id", "sha256:..."] pairs')
    pairs = [(pair[0], pair[1]) for pair in steps]
    if table.get("sum") != chain_total(pairs):
        raise LockError(
            f"{path}: [chain] sum does not match its steps (edited lockfile?); re-lock with xtf lock"
        )
    return pairs


def _quote(text: str) -> str:
    """A TOML basic string (JSON escaping is a subset of TOML's, except DEL, which TOML wants escaped)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _table(document: dict, name: str, path: Path) -> dict:
    value = document.get(name)
    if not isinstance(value, dict):
        raise LockError(f"{path}: missing [{name}] table")
    return value


def _field(table: dict, name: str, kind: type, path: Path, where: str):
    value = table.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise LockError(f"{path}: {where} {name} must be a {kind.__name__}")
    return value


def _entry(raw: object, path: Path, where: str) -> LockEntry:
    if not isinstance(raw, dict):
        raise LockError(f"{path}: {where} is not a table")
    files = []
    for i, item in enumerate(raw.get("files", [])):
        if not isinstance(item, dict):
            raise LockError(f"{path}: {where} files #{i + 1} is not a table")
        files.append(
            FileDigest(
                _field(item, "name", str, path, where + " files"),
                _field(item, "sha256", str, path, where + " files"),
                _field(item, "size", int, path, where + " files"),
            )
        )
    fingerprint = raw.get("fingerprint-digest")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise LockError(f"{path}: {where} fingerprint-digest must be a string")
    entry = LockEntry(
        path=_field(raw, "path", str, path, where),
        sha256=_field(raw, "sha256", str, path, where),
        size=_field(raw, "size", int, path, where),
        stamp=_field(raw, "stamp", str, path, where),
        spec_digest=_field(raw, "spec-digest", str, path, where),
        fingerprint_digest=fingerprint,
        files=tuple(files),
    )
    try:
        Stamp.parse(entry.stamp)
    except XtfError as exc:
        raise LockError(f"{path}: {where} ({entry.path}) has a bad stamp: {exc}") from exc
    return entry


# --------------------------------------------------------------------------- finding and updating


def find_lockfile(start: Path | None = None) -> Path | None:
    """`XTF_LOCK` if set, else the nearest `xtf.lock` in `start` (default: the current folder) or a parent."""
    named = os.environ.get(LOCK_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise LockError(f"{LOCK_ENV}={named} names no lockfile; fix or unset {LOCK_ENV}")
        return path
    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / LOCK_FILENAME).is_file():
            return candidate / LOCK_FILENAME
    return None


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on the sidecar `.<name>.flock` while the lockfile is read and replaced."""
    sidecar = path.with_name(f".{path.name}.flock")
    fd = os.open(sidecar, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: atomic replace only
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def update_lockfile(path: Path, change: Callable[[Lockfile | None], Lockfile]) -> Lockfile:
    """Read the lockfile (None if absent), apply `change`, write the result atomically, all under the
    sidecar lock, so concurrent writers each see the other's result."""
    path = Path(path)
    with exclusive(path):
        current = Lockfile.read(path) if path.exists() else None
        updated = change(current)
        updated.path = path
        updated.write()
    return updated
