"""A full disk while writing: one `error:` line, exit status 1, no output left behind, the source intact.

The disk fills up on purpose: each verb runs as a real process whose `os.write`, `os.pwrite`,
`os.sendfile`, `os.copy_file_range` (and, in one variant, `os.fsync`) raise ENOSPC once a byte budget is
spent, after writing what fits, as a real file system does. Where this machine allows it (root, Linux), one
test also fills a real tmpfs. A failed in-place rewrite leaves no backup behind, so the retry after freeing
space goes through.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import xtf_core
from xtf_core.checkpoint.atomic import is_temp_leftover

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "legacy-1.26.0"
TIMEOUT = 120
NO_SPACE = os.strerror(errno.ENOSPC)

# Runs before xtf is imported; XTF_TEST_FREE_BYTES is what the "disk" still takes.
FULL_DISK = r"""
import errno, os, sys

free = int(os.environ["XTF_TEST_FREE_BYTES"])
fail_fsync = os.environ.get("XTF_TEST_FAIL_FSYNC") == "1"


def take(wanted):
    global free
    if wanted and free <= 0:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    granted = min(wanted, free)
    free -= granted
    return granted


def patch(name, make):
    original = getattr(os, name, None)
    if original is not None:
        setattr(os, name, make(original))


def on_write(original):
    def write(fd, data):
        if fd <= 2:
            return original(fd, data)
        view = memoryview(data).cast("B")
        return original(fd, view[: take(len(view))])
    return write


def on_pwrite(original):
    def pwrite(fd, data, offset):
        view = memoryview(data).cast("B")
        return original(fd, view[: take(len(view))], offset)
    return pwrite


def on_sendfile(original):
    def sendfile(out_fd, in_fd, offset, count, *rest, **kw):
        return original(out_fd, in_fd, offset, take(count), *rest, **kw)
    return sendfile


def on_copy_file_range(original):
    def copy_file_range(src, dst, count, *rest, **kw):
        return original(src, dst, take(count), *rest, **kw)
    return copy_file_range


def on_fsync(original):
    def fsync(fd):
        if fail_fsync:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(fd)
    return fsync


patch("write", on_write)
patch("pwrite", on_pwrite)
patch("sendfile", on_sendfile)
patch("copy_file_range", on_copy_file_range)
patch("fsync", on_fsync)

from xtf_cli.cli import main

main()
"""


def xtf(
    *args: object, cwd: Path, free: int | None = None, fail_fsync: bool = False
) -> subprocess.CompletedProcess:
    """Run the CLI; with `free`, the disk takes only that many more bytes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XTF_TEST_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if free is None:
        command = [sys.executable, "-m", "xtf_cli.cli"]
    else:
        command = [sys.executable, "-c", FULL_DISK]
        env["XTF_TEST_FREE_BYTES"] = str(free)
        env["XTF_TEST_FAIL_FSYNC"] = "1" if fail_fsync else "0"
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=TIMEOUT
    )


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (names relative to it) with its sha256.

    The lockfile's empty `flock` sidecar (`.xtf.lock.flock`, kept on purpose for the next writer) is not
    output and is left out.
    """
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.endswith(".flock")
    }


def assert_disk_full_error(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert NO_SPACE in lines[0] and "Traceback" not in proc.stderr


def assert_nothing_left(before: dict[str, str], folder: Path) -> None:
    after = snapshot(folder)
    assert after == before, sorted(set(after) ^ set(before)) or "a file changed"
    assert not [p for p in folder.rglob("*") if is_temp_leftover(p)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """A legacy stamped file (x-transformers 1.26.0), the same migrated to xtf, and a sharded folder."""
    import xtf_core.distributed as xd
    from xtf_converters import xtransformers
    from xtf_core.chain.stream import migrate_file

    root = tmp_path_factory.mktemp("disk-full-sources")
    legacy = root / "legacy.safetensors"
    config = xtransformers.read_config(EXAMPLE / "config.json")
    xtransformers.convert(EXAMPLE / "model.pt", legacy, release="1.26.0", config=config)
    current = root / "current.safetensors"
    migrate_file(legacy, current)
    sharded = xd.save(xtf_core.load(current), root / "sharded", max_shard_bytes=1024)
    assert len(list(sharded.glob("*.safetensors"))) > 1
    return {"legacy": legacy, "current": current, "sharded": sharded}


@pytest.fixture
def work(tmp_path, sources) -> Path:
    """A fresh copy of the sources, in a folder that holds nothing else."""
    for path in sources.values():
        if path.is_dir():
            shutil.copytree(path, tmp_path / path.name)
        else:
            shutil.copy2(path, tmp_path / path.name)
    return tmp_path


def size(path: Path) -> int:
    return path.stat().st_size


# ------------------------------------------------------------------------------------------------ migrate


@pytest.mark.parametrize("where", ["first write", "mid file", "fsync"])
def test_migrate_to_a_new_file(work, where):
    source = work / "legacy.safetensors"
    before = snapshot(work)
    free = {"first write": 0, "mid file": size(source) // 2, "fsync": 10**9}[where]
    proc = xtf(
        "migrate", source, "-o", work / "out.safetensors", cwd=work, free=free, fail_fsync=where == "fsync"
    )
    assert_disk_full_error(proc)
    assert "out.safetensors" in proc.stderr
    assert_nothing_left(before, work)


def test_migrate_in_place_leaves_no_backup_and_the_retry_succeeds(work):
    source = work / "legacy.safetensors"
    original = source.read_bytes()
    before = snapshot(work)
    assert_disk_full_error(xtf("migrate", source, "--in-place", cwd=work, free=size(source) // 2))
    assert_nothing_left(before, work)  # no legacy.safetensors.bak
    retry = xtf("migrate", source, "--in-place", cwd=work)
    assert retry.returncode == 0, retry.stderr
    assert (work / "legacy.safetensors.bak").read_bytes() == original
    assert source.read_bytes() != original
    assert xtf_core.load(source) is not None


def test_migrate_sharded_folder_in_place_and_to_a_new_folder(work):
    folder = work / "sharded"
    before = snapshot(work)
    half = sum(size(p) for p in folder.iterdir()) // 2
    target = "x-transformers==1.26.0"
    assert_disk_full_error(xtf("migrate", folder, "-o", work / "out", "--to", target, cwd=work, free=half))
    assert_nothing_left(before, work)
    assert_disk_full_error(xtf("migrate", folder, "--in-place", "--to", target, cwd=work, free=half))
    assert_nothing_left(before, work)  # no sharded.bak, no temporary folder
    retry = xtf("migrate", folder, "--in-place", "--to", target, cwd=work)
    assert retry.returncode == 0, retry.stderr
    assert snapshot(work / "sharded.bak") == {
        name.split("/", 1)[1]: digest for name, digest in before.items() if name.startswith("sharded/")
    }


# ------------------------------------------------------------------------------------------------ convert


def test_convert_a_legacy_state_dict(work):
    before = snapshot(work)
    proc = xtf(
        "convert",
        EXAMPLE / "model.pt",
        "--from",
        "x-transformers==1.26.0",
        "--config",
        EXAMPLE / "config.json",
        "-o",
        work / "out.safetensors",
        cwd=work,
        free=4096,
    )
    assert_disk_full_error(proc)
    assert_nothing_left(before, work)


def test_export_writes_both_files_or_neither(work, tmp_path_factory):
    source = work / "current.safetensors"
    probe = tmp_path_factory.mktemp("export-probe") / "model.pt"
    done = xtf("convert", source, "--to", "x-transformers==1.26.0", "-o", probe, cwd=work)
    assert done.returncode == 0, done.stderr
    before = snapshot(work)
    # the first disk fills while the state dict is written; the second only when its config follows it
    for free in (size(probe) // 2, size(probe) + 8):
        proc = xtf(
            "convert", source, "--to", "x-transformers==1.26.0", "-o", work / "model.pt", cwd=work, free=free
        )
        assert_disk_full_error(proc)
        assert_nothing_left(before, work)


# ------------------------------------------------------------------------------------ consolidate, lock, save


def test_consolidate(work, tmp_path_factory):
    probe = tmp_path_factory.mktemp("consolidate-probe") / "one.safetensors"
    done = xtf("consolidate", work / "sharded", "-o", probe, cwd=work)
    assert done.returncode == 0, done.stderr
    before = snapshot(work)
    for free in (0, size(probe) - 1):  # at the first write, at the last byte
        proc = xtf("consolidate", work / "sharded", "-o", work / "one.safetensors", cwd=work, free=free)
        assert_disk_full_error(proc)
        assert_nothing_left(before, work)


def test_lock_keeps_the_old_lockfile_or_writes_none(work):
    ckpt = work / "current.safetensors"
    before = snapshot(work)
    assert_disk_full_error(xtf("lock", ckpt, cwd=work, free=0))
    assert_nothing_left(before, work)  # no xtf.lock
    done = xtf("lock", ckpt, cwd=work)
    assert done.returncode == 0, done.stderr
    before = snapshot(work)
    assert_disk_full_error(xtf("lock", work / "legacy.safetensors", cwd=work, free=10))
    assert_nothing_left(before, work)  # xtf.lock as it was


def test_save_raises_and_leaves_nothing(tmp_path, monkeypatch, sources):
    """The Python API: `xtf_core.save` raises the OSError, naming the file, and writes nothing."""
    model = xtf_core.load(sources["current"])
    write = os.write

    def full(fd, data):
        if fd <= 2:
            return write(fd, data)
        raise OSError(errno.ENOSPC, NO_SPACE)

    monkeypatch.setattr(os, "write", full)
    target = tmp_path / "model.safetensors"
    with pytest.raises(OSError) as caught:
        xtf_core.save(model, target)
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ real tmpfs


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs, mounted for this test only (needs root on Linux; skipped elsewhere)."""
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)], capture_output=True, timeout=30
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=30)


def test_a_real_full_file_system(small_tmpfs, work):
    source = work / "legacy.safetensors"
    filler = small_tmpfs / "filler"
    # leave less room than the output needs
    with open(filler, "wb") as handle, contextlib.suppress(OSError):
        handle.write(b"\0" * (256 * 1024 - size(source) // 2))
    before_source, before_fs = snapshot(work), snapshot(small_tmpfs)
    assert_disk_full_error(xtf("migrate", source, "-o", small_tmpfs / "out.safetensors", cwd=work))
    assert_nothing_left(before_source, work)
    assert_nothing_left(before_fs, small_tmpfs)
    filler.unlink()
    done = xtf("migrate", source, "-o", small_tmpfs / "out.safetensors", cwd=work)
    assert done.returncode == 0, done.stderr


def test_a_backup_stays_only_once_the_source_was_replaced(tmp_path):
    """In process: a failure before the rename drops the backup; one after it keeps the only old copy."""
    from xtf_core.checkpoint.atomic import atomic_file, backup_for_rewrite

    source = tmp_path / "m.safetensors"
    source.write_bytes(b"old")
    with pytest.raises(OSError), backup_for_rewrite(source):
        raise OSError(errno.ENOSPC, NO_SPACE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    with pytest.raises(RuntimeError), backup_for_rewrite(source):
        with atomic_file(source) as fd:
            os.write(fd, b"new")
        raise RuntimeError("after the replacement")
    assert (tmp_path / "m.safetensors.bak").read_bytes() == b"old" and source.read_bytes() == b"new"
