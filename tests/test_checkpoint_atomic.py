"""Atomic writes leave the old content or the whole new content; backups are made once and kept."""

import pytest

from xtf_core.checkpoint.atomic import atomic_file, atomic_folder, is_temp_leftover, make_backup
from xtf_core.checkpoint.io import write_all
from xtf_core.errors import MigrationError


def test_atomic_file_replaces_on_success(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_file(target) as fd:
        write_all(fd, b"new content")
        assert target.read_bytes() == b"old"
        leftovers = [p for p in tmp_path.iterdir() if is_temp_leftover(p)]
        assert len(leftovers) == 1 and leftovers[0].name.startswith(".out.bin.xtf-tmp-")
    assert target.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_file_cleans_up_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_file(target) as fd:
        write_all(fd, b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_swaps_whole_folder(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_folder(target) as folder:
        (folder / "new.txt").write_text("new")
        assert (target / "old.txt").exists()
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_backup_keeps_old_bytes_after_rewrite_and_is_never_overwritten(tmp_path):
    source = tmp_path / "m.safetensors"
    source.write_bytes(b"original")
    backup = make_backup(source)
    assert backup.name == "m.safetensors.bak"
    with atomic_file(source) as fd:
        write_all(fd, b"rewritten")
    assert backup.read_bytes() == b"original" and source.read_bytes() == b"rewritten"
    with pytest.raises(MigrationError, match="already exists"):
        make_backup(source)
    assert backup.read_bytes() == b"original"


def test_folder_backup_copies_every_file(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "a").write_bytes(b"1")
    (folder / "b").write_bytes(b"2")
    backup = make_backup(folder)
    assert {p.name: p.read_bytes() for p in backup.iterdir()} == {"a": b"1", "b": b"2"}
    assert not any(is_temp_leftover(p) for p in tmp_path.iterdir())
