"""Lockfile operations: lock checkpoints under a pin, and check a lockfile (what `xtf lock` runs).

The format lives in `lockfile.py`; load-time enforcement in `lock.py`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from xtf_core.chain.compat import stamp_matches
from xtf_core.chain.graph import Chain, default_chain
from xtf_core.checkpoint.stamp import Stamp
from xtf_core.errors import LockError, XtfError

from .format import (
    LOCK_ENV,
    LOCK_FILENAME,
    FileDigest,
    LockEntry,
    Lockfile,
    Pin,
    combined_digest,
    describe_checkpoint,
    hash_file,
    update_lockfile,
)

ReleaseCheck = Callable[[str], object]


def lockfile_path(option: Path | None = None) -> Path:
    """--lockfile, else $XTF_LOCK, else ./xtf.lock."""
    return option or Path(os.environ.get(LOCK_ENV) or LOCK_FILENAME)


def lockfile_option(path: Path) -> str:
    """` --lockfile PATH` unless PATH is the one xtf finds without it."""
    return "" if path.resolve() == lockfile_path().resolve() else f" --lockfile {path}"


def check_pin(pin: Pin, chain: Chain, release_check: ReleaseCheck | None = None) -> None:
    """The pin must derive stamps from the chain; a pin on an x-transformers release must pass
    `release_check` (the converters' list of known and broken releases)."""
    if pin.lineage == "x-transformers" and release_check is not None:
        try:
            release_check(pin.target(chain).version)
        except XtfError as exc:
            raise LockError(f"pin {pin}: {exc}") from exc
    pin.stamps(chain)


def fix_command(ckpt: object, stamp: Stamp, target: Stamp, chain: Chain, how: str) -> str:
    """The command that brings a checkpoint to the pinned release (`how`: `--to-lock [--lockfile P]` once
    the lockfile exists, `--to RELEASE` before), or why none can."""
    try:
        chain.route(stamp, target)
    except XtfError as exc:
        return "no migration can: " + " ".join(str(exc).split())
    return f"fix: xtf migrate {ckpt} {how} --in-place"


def lock_checkpoints(
    path: Path, ckpts: list[Path], pin_text: str | None = None, release_check: ReleaseCheck | None = None
) -> tuple[Lockfile, list[LockEntry], list[str]]:
    """Add or refresh entries (hashed outside the file lock), re-derive the pin's stamps, write atomically.

    Returns (the lockfile written, the entries added, warnings about locked files a new pin excludes).
    A checkpoint the pin cannot load is refused (LockError, nothing written) with the command that fixes it.
    """
    chain = default_chain()
    root = path.resolve().parent
    new_pin = Pin.parse(pin_text) if pin_text else None
    if new_pin is not None:
        check_pin(new_pin, chain, release_check)
    described = [(ckpt, describe_checkpoint(ckpt, root)) for ckpt in ckpts]
    notes: list[str] = []

    def change(current: Lockfile | None) -> Lockfile:
        pin = new_pin or (current.pin if current else Pin.default())
        if current is None:
            updated = Lockfile.new(path, pin, chain)
        else:
            updated = current.with_pin(pin, chain)
        target = Stamp.parse(updated.target)
        refused = []
        for ckpt, entry in described:
            stamp = Stamp.parse(entry.stamp)
            if not stamp_matches(stamp, updated.stamps):
                refused.append(
                    f"{ckpt} is stamped {stamp}, which {pin} cannot load; "
                    + fix_command(ckpt, stamp, target, chain, f"--to {target}")
                    + f", then xtf lock {ckpt}"
                )
        if refused:
            raise LockError("; ".join(refused) + " (nothing written)")
        for _, entry in described:
            updated.entries[entry.path] = entry
        if new_pin is not None:
            for entry in updated.entries.values():
                stamp = Stamp.parse(entry.stamp)
                if not stamp_matches(stamp, updated.stamps):
                    where = Path(os.path.relpath(updated.location(entry)))
                    notes.append(
                        f"{entry.path}: stamped {stamp}, which {pin} cannot load; "
                        + fix_command(where, stamp, target, chain, "--to-lock" + lockfile_option(path))
                    )
        return updated

    updated = update_lockfile(path, change)
    return updated, [entry for _, entry in described], notes


def check_lockfile(lockfile: Lockfile, release_check: ReleaseCheck | None = None) -> list[str]:
    """Everything `xtf lock --check` refuses, one line each (empty: all good)."""
    from xtf_core.lockfile.enforce import pin_problem

    chain = default_chain()
    name = lockfile.path
    problems = []
    try:
        check_pin(lockfile.pin, chain, release_check)
        stamps, target = lockfile.pin.stamps(chain), lockfile.pin.target(chain)
    except XtfError as exc:
        return [f"{name}: {' '.join(str(exc).split())}"]
    problem = pin_problem(lockfile)
    if problem:
        problems.append(f"{name}: {problem}")
    if lockfile.chain_steps:
        from xtf_core.chain.digest import chain_changes, chain_sum

        problems += [
            f"{name}: {change}; a released step must never change (restore it), or re-lock with xtf lock"
            + lockfile_option(name)
            for change in chain_changes(lockfile.chain_steps, chain_sum(chain))
        ]
    if stamps != lockfile.stamps or str(target) != lockfile.target:
        problems.append(
            f"{name}: the pin's recorded target/stamps ({lockfile.target}; {', '.join(lockfile.stamps)}) differ "
            f"from what the installed chain derives ({target}; {', '.join(stamps)}); refresh them with xtf lock"
            + lockfile_option(name)
        )
    for key in sorted(lockfile.entries):
        entry = lockfile.entries[key]
        location = lockfile.location(entry)
        shown = entry.path
        if not location.exists():
            problems.append(f"{shown}: locked in {name} but missing")
        else:
            expected = {f.name: f for f in entry.files} if entry.files else None
            if expected is None:
                sha, size = hash_file(location) if location.is_file() else ("", -1)
                if (sha, size) != (entry.sha256, entry.size):
                    problems.append(
                        f"{shown}: sha256 {sha[:12]}… ({size} bytes) differs from the locked {entry.sha256[:12]}… "
                        f"({entry.size} bytes); restore the locked file, or re-lock it with xtf lock {shown}"
                    )
            else:
                found = []
                for file in sorted(expected):
                    path = location / file
                    if not path.is_file():
                        problems.append(f"{shown}/{file}: locked in {name} but missing")
                        continue
                    sha, size = hash_file(path)
                    found.append(FileDigest(file, sha, size))
                    if sha != expected[file].sha256:
                        problems.append(
                            f"{shown}/{file}: sha256 {sha[:12]}… differs from the locked {expected[file].sha256[:12]}…; "
                            f"restore the locked file, or re-lock it with xtf lock {shown}"
                        )
                if combined_digest(list(expected.values())) != entry.sha256:
                    problems.append(
                        f"{shown}: the folder digest does not match its file digests (edited lockfile?)"
                    )
        stamp = Stamp.parse(entry.stamp)
        if not stamp_matches(stamp, stamps):
            problems.append(
                f"{shown}: stamped {stamp}, which {lockfile.pin} cannot load; "
                + fix_command(shown, stamp, target, chain, "--to-lock" + lockfile_option(name))
            )
    return problems
