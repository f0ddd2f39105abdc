"""Special files where a checkpoint is expected: refused from `stat`, before any open that could block.

A FIFO (as the checkpoint, as its index, as a shard of a sharded folder, or named model.safetensors in a
folder), a character device (/dev/zero), a socket, and a folder in place of a file or a shard: every verb
and `xtf_core.load` answer with one line at once instead of hanging or reading forever.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest
from hostile import (
    assert_cli_refuses,
    assert_load_refuses,
    ensure_posix,
    good_checkpoint,
    run_all_refusals,
    sharded_folder,
)

from xtf_core.checkpoint.header import INDEX_FILENAME, read_checkpoint_headers
from xtf_core.errors import CheckpointFormatError


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return good_checkpoint(tmp_path_factory.mktemp("good"))


def test_fifo_as_the_checkpoint(tmp_path):
    ensure_posix()
    path = tmp_path / "model.safetensors"
    os.mkfifo(path)
    run_all_refusals(path, tmp_path, match="FIFO", verify=True)
    assert_load_refuses(path, CheckpointFormatError, match="FIFO")
    assert_load_refuses(tmp_path, CheckpointFormatError, match="FIFO")  # the folder holding it


def test_character_device_as_the_checkpoint(tmp_path):
    ensure_posix()
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    link = tmp_path / "zero.safetensors"
    link.symlink_to("/dev/zero")
    out = tmp_path / "out.safetensors"
    assert_cli_refuses("inspect", "/dev/zero", source=link, match="character device")
    assert_cli_refuses("migrate", link, "-o", out, source=link, output=out, match="character device")
    assert_load_refuses(link, CheckpointFormatError, match="character device")


def test_socket_as_the_checkpoint(tmp_path):
    ensure_posix()
    path = tmp_path / "s.safetensors"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
    except OSError as exc:  # path too long for AF_UNIX on some systems
        pytest.skip(f"cannot bind a unix socket here ({exc})")
    try:
        out = tmp_path / "out.safetensors"
        assert_cli_refuses("migrate", path, "-o", out, source=path, output=out, match="socket")
        assert_load_refuses(path, CheckpointFormatError, match="socket")
    finally:
        server.close()


def test_folder_named_like_the_checkpoint_inside_a_folder(tmp_path):
    (tmp_path / "model.safetensors").mkdir()
    (tmp_path / "model.safetensors" / "junk").write_text("x")
    run_all_refusals(tmp_path, tmp_path, match="folder")
    assert_load_refuses(tmp_path, CheckpointFormatError, match="folder")


def test_fifo_as_a_shard_of_a_sharded_folder(tmp_path, good):
    ensure_posix()
    folder = tmp_path / "sharded"
    folder.mkdir()
    weight_map = sharded_folder(folder, good)
    read_checkpoint_headers(folder)  # the control: the folder as written is fine
    shard = sorted(set(weight_map.values()))[1]
    (folder / shard).unlink()
    os.mkfifo(folder / shard)
    run_all_refusals(folder, tmp_path, match="FIFO", verify=True)
    assert_load_refuses(folder, CheckpointFormatError, match="FIFO")


def test_folder_in_place_of_a_shard(tmp_path, good):
    folder = tmp_path / "sharded"
    folder.mkdir()
    weight_map = sharded_folder(folder, good)
    shard = sorted(set(weight_map.values()))[0]
    (folder / shard).unlink()
    (folder / shard).mkdir()
    out = tmp_path / "out"
    assert_cli_refuses("migrate", folder, "-o", out, source=folder, output=out, match="folder")
    assert_load_refuses(folder, CheckpointFormatError, match="folder")


def test_fifo_as_the_index(tmp_path, good):
    ensure_posix()
    folder = tmp_path / "sharded"
    folder.mkdir()
    sharded_folder(folder, good)
    (folder / INDEX_FILENAME).unlink()
    os.mkfifo(folder / INDEX_FILENAME)
    run_all_refusals(folder, tmp_path, match="FIFO")
    assert_load_refuses(folder / INDEX_FILENAME, CheckpointFormatError, match="FIFO")


def test_sharded_folder_loads_when_nothing_is_special(tmp_path, good):
    """The control for the cases above: the same folder, all regular files, loads."""
    import xtf_core

    folder = tmp_path / "sharded"
    folder.mkdir()
    sharded_folder(folder, good)
    model = xtf_core.load(folder)
    reference = xtf_core.load(good)
    for name, tensor in model.state_dict().items():
        assert tensor.equal(reference.state_dict()[name]), name
    shutil.rmtree(folder)
