"""A sharded folder whose shards carry different stamps is refused by every verb and by `xtf_core.load`.

The check lives in one place (`check_shard_stamps`, run by `read_checkpoint_headers`), so no reader can
take the index's stamp for the whole folder while a shard was written by another release.
"""

from __future__ import annotations

import pytest
from hostile import (
    assert_cli_refuses,
    assert_load_refuses,
    good_checkpoint,
    run_xtf,
    sharded_folder,
    split_file,
)

from xtf_core.checkpoint.header import read_checkpoint_headers
from xtf_core.errors import CheckpointFormatError

OTHER = {"xtf.lineage": "x-transformers", "xtf.version": "2.31.10"}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return good_checkpoint(tmp_path_factory.mktemp("good"))


@pytest.fixture
def metadata(good) -> dict:
    return split_file(good.read_bytes())[0]["__metadata__"]


def mixed(folder, good, first: dict, second: dict):
    folder.mkdir()
    sharded_folder(folder, good, [first, second])
    return folder


def test_same_stamps_load(tmp_path, good, metadata):
    """The control: the same folder with agreeing stamps is read and loaded."""
    import xtf_core

    folder = mixed(tmp_path / "ok", good, metadata, dict(metadata))
    assert read_checkpoint_headers(folder).tensor_count > 2
    xtf_core.load(folder)


@pytest.mark.parametrize(
    "case",
    ["second_shard_other_release", "second_shard_unstamped", "first_shard_other_format"],
)
def test_mixed_stamps_refused_by_load_and_the_header_reader(tmp_path, good, metadata, case):
    if case == "second_shard_other_release":
        first, second = metadata, {**metadata, **OTHER}
    elif case == "second_shard_unstamped":
        first, second = metadata, {"format": "pt"}
    else:
        first, second = {**metadata, "xtf.format": "2"}, metadata
    folder = mixed(tmp_path / "mixed", good, first, second)
    with pytest.raises(CheckpointFormatError, match="shards carry different stamps"):
        read_checkpoint_headers(folder)
    assert_load_refuses(folder, CheckpointFormatError, match="different stamps")


def test_index_stamped_differently_from_every_shard(tmp_path, good, metadata):
    folder = mixed(tmp_path / "mixed", good, {**metadata, **OTHER}, {**metadata, **OTHER})
    assert_load_refuses(folder, CheckpointFormatError, match="different stamps")


def test_mixed_stamps_refused_by_every_verb(tmp_path, good, metadata):
    folder = mixed(tmp_path / "mixed", good, metadata, {**metadata, **OTHER})
    out = tmp_path / "out"
    lockfile = tmp_path / "xtf.lock"
    verbs = [
        (("inspect", folder), None),
        (("inspect", "--json", folder), None),
        (("migrate", folder, "-o", out), out),
        (("migrate", folder, "-o", out, "--dry-run"), out),
        (("verify", folder), None),
        (("compat", folder), None),
        (("consolidate", folder, "-o", tmp_path / "one.safetensors"), tmp_path / "one.safetensors"),
        (("lock", folder, "--lockfile", lockfile), lockfile),
    ]
    for args, output in verbs:
        line = assert_cli_refuses(*args, source=folder, output=output, match="different stamps")
        assert "x-transformers==2.31.10" in line and "xtf==" in line


def test_in_place_migration_of_a_mixed_folder_changes_nothing(tmp_path, good, metadata):
    folder = mixed(tmp_path / "mixed", good, metadata, {**metadata, **OTHER})
    assert_cli_refuses("migrate", folder, "--in-place", source=folder, match="different stamps")
    assert not (tmp_path / "mixed.bak").exists()
    result, _ = run_xtf("inspect", folder)
    assert result.returncode == 1
