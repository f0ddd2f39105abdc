"""Lockfile enforcement at load time: a locked checkpoint must match its recorded sha256.

`xtf_core.load` wraps its read in `enforce_lock(path, lock)`. The lockfile is `lock` (a path or a
`Lockfile`), else `XTF_LOCK`, else the nearest `xtf.lock` in the current folder or a parent; `lock=False`
turns the check off. The yielded hasher is fed every byte while the tensors are read, so the check costs no
second read; the digest is compared when the read ends, before any model is built. A file the lock does not
name loads unchecked. An installed xtf outside the pin only warns (loudly): loading still works.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xtf_core.checkpoint.header import read_checkpoint_headers
from xtf_core.checkpoint.stamp import current_stamp
from xtf_core.errors import LockError
from xtf_core.lockfile import (
    FileDigest,
    LockEntry,
    Lockfile,
    checkpoint_files,
    combined_digest,
    find_lockfile,
    hash_file,
)

log = logging.getLogger("xtf")


class LockPinWarning(UserWarning):
    """The installed xtf does not satisfy the lockfile's pin."""


def resolve_lock(lock: Any = None) -> Lockfile | None:
    """The lockfile that applies: `lock` itself, the file it names, or the one found (None: no lock)."""
    if lock is False:
        return None
    if isinstance(lock, Lockfile):
        return lock
    if lock is None or lock is True:
        found = find_lockfile()
        return Lockfile.read(found) if found is not None else None
    return Lockfile.read(Path(lock))


def pin_problem(lockfile: Lockfile) -> str | None:
    """Why the installed xtf does not satisfy the pin, or None."""
    installed = current_stamp()
    if lockfile.pin.lineage == installed.lineage and not lockfile.pin.allows(installed):
        return (
            f"the installed xtf {installed.version} does not satisfy the pin {lockfile.pin} in "
            f'{lockfile.path} (pip install "{lockfile.pin}", or re-pin with xtf lock --pin)'
        )
    return None


class _StreamDigest:
    """Receives the bytes of a checkpoint's data files in read order and keeps one sha256 per file.

    Boundaries come from the recorded sizes (the files were already checked to have those sizes)."""

    def __init__(self, sizes: list[tuple[str, int]]):
        self.sizes = sizes
        self.digests = [hashlib.sha256() for _ in sizes]
        self.current = 0
        self.left = sizes[0][1] if sizes else 0
        self.overflow = False

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            while self.left == 0 and self.current + 1 < len(self.sizes):
                self.current += 1
                self.left = self.sizes[self.current][1]
            if self.left == 0:
                self.overflow = bool(view) or self.overflow
                return
            take = min(self.left, len(view))
            self.digests[self.current].update(view[:take])
            self.left -= take
            view = view[take:]

    def complete(self) -> bool:
        return not self.overflow and self.current == len(self.sizes) - 1 and self.left == 0

    def hexdigests(self) -> dict[str, str]:
        return {name: digest.hexdigest() for (name, _), digest in zip(self.sizes, self.digests)}


def _mismatch(lockfile: Lockfile, entry: LockEntry, detail: str) -> LockError:
    return LockError(
        f"{lockfile.location(entry)}: {detail}, so it is not the checkpoint locked in {lockfile.path}; "
        f"restore the locked file, or if the change is intended re-lock it (xtf lock {entry.path})"
    )


def _expected_files(entry: LockEntry) -> dict[str, tuple[str, int]]:
    if entry.files:
        return {f.name: (f.sha256, f.size) for f in entry.files}
    return {Path(entry.path).name: (entry.sha256, entry.size)}


@contextlib.contextmanager
def enforce_lock(path: str | os.PathLike[str], lock: Any = None) -> Iterator[Any]:
    """Yield a hasher for `load_state` (None when `path` is not locked); refuse a mismatch on exit."""
    lockfile = resolve_lock(lock)
    if lockfile is None:
        yield None
        return
    problem = pin_problem(lockfile)
    if problem:
        log.warning("xtf: WARNING: %s", problem)
        warnings.warn(problem, LockPinWarning, stacklevel=4)
    entry = lockfile.entry_for(path)
    if entry is None:
        yield None
        return
    headers = read_checkpoint_headers(path)
    files = checkpoint_files(headers)
    expected = _expected_files(entry)
    if sorted(f.name for f in files) != sorted(expected):
        raise _mismatch(
            lockfile, entry, f"its files ({', '.join(f.name for f in files)}) differ from the locked ones"
        )
    for file in files:
        size = file.stat().st_size
        if size != expected[file.name][1]:
            raise _mismatch(
                lockfile, entry, f"{file.name} is {size} bytes, locked at {expected[file.name][1]}"
            )
    # load_state reads the data files (every shard, in the order the headers list them) through the hasher;
    # a sharded index is small and hashed here.
    streamed = [(h.path.name, expected[h.path.name][1]) for h in headers.shards.values()]
    hasher = _StreamDigest(streamed)
    yield hasher
    actual = hasher.hexdigests() if hasher.complete() else {}
    for file in files:
        if file.name not in actual:
            actual[file.name] = hash_file(file)[0]
    wrong = sorted(name for name, (sha, _) in expected.items() if actual.get(name) != sha)
    if wrong and hasher.complete():
        # Confirm from the files themselves before refusing (the stream order is load_state's business).
        actual.update({file.name: hash_file(file)[0] for file in files if file.name in wrong})
        wrong = sorted(name for name, (sha, _) in expected.items() if actual.get(name) != sha)
    if wrong:
        if entry.files:
            found = combined_digest([FileDigest(n, actual[n], expected[n][1]) for n in expected])
            detail = f"sha256 of {', '.join(wrong)} changed (folder digest {found[:12]}…, locked {entry.sha256[:12]}…)"
        else:
            detail = f"sha256 {actual[wrong[0]][:12]}… differs from the locked {entry.sha256[:12]}…"
        raise _mismatch(lockfile, entry, detail)
