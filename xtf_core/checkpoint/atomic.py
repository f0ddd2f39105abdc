"""Write files and folders so that a reader sees the old content or the whole new content, never a part.

Output goes to a temporary sibling named `.<name>.xtf-tmp-<hex>` (recognisable, and never the output path),
is fsynced, then renamed over the target, and the folder is fsynced. On any error (a full disk included) the temporary is removed;
after a SIGKILL it stays behind under its temporary name, which no reader mistakes for a checkpoint.
Backups for in-place rewrites are made before anything is written and are never overwritten; a rewrite that
fails before it replaced its source removes its backup again, so the next attempt is not refused.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from xtf_core.errors import MigrationError

TEMP_MARKER = ".xtf-tmp-"
BACKUP_SUFFIX = ".bak"


def temp_sibling(target: Path) -> Path:
    """A fresh temporary path in the target's folder (same filesystem, so the final rename is atomic)."""
    return target.parent / f".{target.name}{TEMP_MARKER}{secrets.token_hex(4)}"


def is_temp_leftover(path: Path) -> bool:
    """Whether `path` is a temporary left behind by an interrupted xtf write."""
    return path.name.startswith(".") and TEMP_MARKER in path.name


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[int]:
    """Yield a raw file descriptor for the new content of `target`; it replaces `target` on success."""
    target = Path(target)
    temp = temp_sibling(target)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        yield fd
        os.fsync(fd)
    except BaseException as exc:
        os.close(fd)
        temp.unlink(missing_ok=True)
        _name_the_target(exc, target)
        raise
    os.close(fd)
    os.replace(temp, target)
    fsync_dir(target.parent)


def _name_the_target(exc: BaseException, target: Path) -> None:
    """A failed write (`ENOSPC` from os.write carries no file name) names the file it was writing."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = str(target)


@contextlib.contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield a temporary folder to fill; it becomes `target` on success (an existing target is replaced)."""
    target = Path(target)
    temp = temp_sibling(target)
    temp.mkdir()
    try:
        yield temp
        fsync_dir(temp)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    if target.exists():
        retired = temp_sibling(target)
        os.replace(target, retired)
        try:
            os.replace(temp, target)
        except BaseException:
            os.replace(retired, target)
            shutil.rmtree(temp, ignore_errors=True)
            raise
        shutil.rmtree(retired, ignore_errors=True)
    else:
        try:
            os.replace(temp, target)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_files(*targets: Path) -> Iterator[tuple[int, ...]]:
    """Like `atomic_file` for several files written together (e.g. a state dict and its config).

    Every file is written and fsynced under its temporary name first; only then are they renamed into
    place, so a failure while writing (a full disk) leaves none of them behind.
    """
    paths = [Path(target) for target in targets]
    temps: list[Path] = []
    fds: list[int] = []
    try:
        for path in paths:
            temp = temp_sibling(path)
            fds.append(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            temps.append(temp)
        yield tuple(fds)
        for fd in fds:
            os.fsync(fd)
    except BaseException as exc:
        for fd in fds:
            os.close(fd)
        for temp in temps:
            temp.unlink(missing_ok=True)
        _name_the_target(exc, paths[0])  # the main output; its companions share its fate
        raise
    for fd in fds:
        os.close(fd)
    for temp, path in zip(temps, paths):
        os.replace(temp, path)
    for folder in {path.parent for path in paths}:
        fsync_dir(folder)


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + BACKUP_SUFFIX)


def make_backup(path: Path) -> Path:
    """Keep `path` (a file or folder) as `<name>.bak` before an in-place rewrite; refuse to overwrite one.

    Files are hard-linked where possible (instant; the rewrite renames a new inode over the original, so
    the link keeps the old bytes), copied otherwise.
    """
    path = Path(path)
    backup = backup_path(path)
    if backup.exists() or backup.is_symlink():
        raise MigrationError(
            f"{path}: backup {backup} already exists; move it away (or delete it) before migrating in place"
        )
    temp = temp_sibling(backup)
    try:
        if path.is_dir():
            temp.mkdir()
            for child in sorted(path.iterdir()):
                if child.is_file() and not is_temp_leftover(child):
                    _link_or_copy(child, temp / child.name)
            fsync_dir(temp)
        else:
            _link_or_copy(path, temp)
        os.rename(temp, backup)
    except BaseException:
        if temp.is_dir():
            shutil.rmtree(temp, ignore_errors=True)
        else:
            temp.unlink(missing_ok=True)
        raise
    fsync_dir(backup.parent)
    return backup


@contextlib.contextmanager
def backup_for_rewrite(path: Path) -> Iterator[Path]:
    """`make_backup(path)` around an in-place rewrite of `path`.

    When the rewrite fails before it replaced `path` (a full disk, a refused step, Ctrl-C), `path` still
    holds the original and the backup is only a second copy of it: it is removed, so that retrying is not
    refused because a backup exists. A failure after the replacement keeps the backup, the only old copy.
    """
    path = Path(path)
    before = _identity(path)
    backup = make_backup(path)
    try:
        yield backup
    except BaseException:
        if _identity(path) == before:
            if backup.is_dir() and not backup.is_symlink():
                shutil.rmtree(backup, ignore_errors=True)
            else:
                backup.unlink(missing_ok=True)
        raise


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _link_or_copy(source: Path, destination: Path) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
        with open(destination, "rb") as handle:
            os.fsync(handle.fileno())
