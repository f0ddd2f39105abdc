"""Lockfile enforcement at load time: a locked checkpoint must match its recorded sha256.

`xtf_core.load` opens the checkpoint once, then asks `lock_check(opened, lock)` whether it is locked. The
lockfile is `lock` (a path or a `Lockfile`), else `XTF_LOCK`, else the nearest `xtf.lock` in the current
folder or a parent; `lock=False` turns the check off. A locked checkpoint gets a `LockCheck`: its file
names and sizes are checked at once, its `hashers` are handed to the read (which feeds them exactly the
bytes it keeps, so the check costs no second read; the digest runs on another thread while reading and
building go on), and `verify()` compares the digests before the model is returned. A file the lock does not name loads unchecked. An installed xtf outside the pin
only warns (loudly): loading still works.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xtf_core.checkpoint.source import OpenedCheckpoint
from xtf_core.checkpoint.stamp import current_stamp
from xtf_core.errors import LockError
from xtf_core.lockfile.format import (
    FileDigest,
    LockEntry,
    Lockfile,
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


def _mismatch(lockfile: Lockfile, entry: LockEntry, detail: str) -> LockError:
    return LockError(
        f"{lockfile.location(entry)}: {detail}, so it is not the checkpoint locked in {lockfile.path}; "
        f"restore the locked file, or if the change is intended re-lock it (xtf lock {entry.path})"
    )


def _expected_files(entry: LockEntry) -> dict[str, tuple[str, int]]:
    if entry.files:
        return {f.name: (f.sha256, f.size) for f in entry.files}
    return {Path(entry.path).name: (entry.sha256, entry.size)}


class BackgroundDigest:
    """A sha256 computed on a worker thread (hashlib releases the GIL), fed buffers in order.

    `update` only queues the buffer, so the reader goes on reading (and the model is built) while the
    digest is computed; a buffer must not change until `flush()` (every queued buffer hashed) returns."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def update(self, data: Any) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="xtf-sha256", daemon=True)
            self._thread.start()
        self._queue.put(data)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._digest.update(item)
            except BaseException as exc:  # reported by hexdigest, on the caller's thread
                self._error = exc
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        if self._thread is not None:
            self._queue.join()

    def hexdigest(self) -> str:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error
        return self._digest.hexdigest()


@dataclass
class LockCheck:
    """A locked checkpoint being loaded: what its files must hash to, and the hashers the read feeds."""

    lockfile: Lockfile
    entry: LockEntry
    expected: dict[str, tuple[str, int]]
    opened: OpenedCheckpoint
    hashers: dict[str, Any] = field(default_factory=dict)

    def verify(self) -> None:
        """Refuse (LockError) unless every file hashed to its locked digest; a sharded folder's index is
        small and hashed here."""
        actual = {name: hasher.hexdigest() for name, hasher in self.hashers.items()}
        for file in self.opened.files:
            if file.name not in actual:
                actual[file.name] = hash_file(file)[0]
        wrong = sorted(name for name, (sha, _) in self.expected.items() if actual.get(name) != sha)
        if not wrong:
            return
        entry = self.entry
        if entry.files:
            found = combined_digest([FileDigest(n, actual[n], self.expected[n][1]) for n in self.expected])
            detail = f"sha256 of {', '.join(wrong)} changed (folder digest {found[:12]}…, locked {entry.sha256[:12]}…)"
        else:
            detail = f"sha256 {actual[wrong[0]][:12]}… differs from the locked {entry.sha256[:12]}…"
        raise _mismatch(self.lockfile, entry, detail)


def lock_check(opened: OpenedCheckpoint, lock: Any = None) -> LockCheck | None:
    """The check a load of `opened` must pass (None: no lockfile, or it does not name this checkpoint).

    File names and sizes are compared now, before any tensor is read; the digests after the read."""
    lockfile = resolve_lock(lock)
    if lockfile is None:
        return None
    problem = pin_problem(lockfile)
    if problem:
        log.warning("xtf: WARNING: %s", problem)
        warnings.warn(problem, LockPinWarning, stacklevel=3)
    entry = lockfile.entry_for(opened.headers)
    if entry is None:
        return None
    files = opened.files
    expected = _expected_files(entry)
    if sorted(f.name for f in files) != sorted(expected):
        raise _mismatch(
            lockfile, entry, f"its files ({', '.join(f.name for f in files)}) differ from the locked ones"
        )
    sizes = {header.path.name: header.file_size for header in opened.headers.shards.values()}
    for file in files:
        size = sizes[file.name] if file.name in sizes else file.stat().st_size
        if size != expected[file.name][1]:
            raise _mismatch(
                lockfile, entry, f"{file.name} is {size} bytes, locked at {expected[file.name][1]}"
            )
    hashers = {header.path.name: BackgroundDigest() for header in opened.headers.shards.values()}
    return LockCheck(lockfile, entry, expected, opened, hashers)
