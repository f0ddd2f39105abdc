"""Malformed sharded-folder index files: strict JSON, bounded size and depth, plain metadata, sane names.

Each case takes a real two-shard folder and rewrites only `model.safetensors.index.json`; the header reader
refuses it, `migrate` writes nothing and leaves the folder unchanged, and `xtf_core.load` raises
CheckpointFormatError.
"""

from __future__ import annotations

import json

import pytest
from hostile import assert_cli_refuses, assert_load_refuses, good_checkpoint, sharded_folder

from xtf_core.checkpoint.header import INDEX_FILENAME, MAX_INDEX_BYTES, read_checkpoint_headers
from xtf_core.errors import CheckpointFormatError


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return good_checkpoint(tmp_path_factory.mktemp("good"))


def rewrite(index: dict, case: str) -> str:
    weight_map = index["weight_map"]
    first = next(iter(weight_map))
    text = json.dumps(index)
    if case == "duplicate_weight_map_key":
        return text[:-2] + f", {json.dumps(first)}: {json.dumps(weight_map[first])}" + "}}"
    if case == "duplicate_metadata_key":
        return text.replace('"metadata": {', '"metadata": {"xtf.version": "0.0.1", ', 1)
    if case == "nan_total_size":
        return text.replace(f'"total_size": {index["metadata"]["total_size"]}', '"total_size": NaN', 1)
    if case == "nested_100000_levels":
        return text[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    if case == "stamp_not_text":
        return json.dumps({**index, "metadata": {**index["metadata"], "xtf.version": 1}})
    if case == "metadata_nested":
        return json.dumps({**index, "metadata": {**index["metadata"], "extra": {"a": [1]}}})
    if case == "shard_outside_folder":
        return json.dumps({**index, "weight_map": {**weight_map, first: "../evil.safetensors"}})
    if case == "index_names_itself":
        return json.dumps({**index, "weight_map": {**weight_map, first: INDEX_FILENAME}})
    if case == "shard_missing_a_tensor":
        return json.dumps({**index, "weight_map": {**weight_map, "not.there": weight_map[first]}})
    if case == "not_utf8":
        return None
    raise AssertionError(case)


CASES = {
    "duplicate_weight_map_key": "appears more than once",
    "duplicate_metadata_key": "'xtf.version' appears more than once",
    "nan_total_size": "NaN",
    "nested_100000_levels": "nested deeper",
    "stamp_not_text": "must be a string",
    "metadata_nested": "plain values",
    "shard_outside_folder": "must be a file name",
    "index_names_itself": "names itself",
    "shard_missing_a_tensor": "disagrees with its shards",
    "not_utf8": "UTF-8",
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_index_is_refused(tmp_path, good, case):
    folder = tmp_path / "sharded"
    folder.mkdir()
    sharded_folder(folder, good)
    index_path = folder / INDEX_FILENAME
    text = rewrite(json.loads(index_path.read_text()), case)
    if text is None:
        index_path.write_bytes(b'{"weight_map": {"\xff": "a"}}')
    else:
        index_path.write_text(text)
    with pytest.raises(CheckpointFormatError) as info:
        read_checkpoint_headers(folder)
    assert CASES[case] in str(info.value) and len(str(info.value)) < 1000
    out = tmp_path / "out"
    assert_cli_refuses("migrate", folder, "-o", out, source=folder, output=out, match=CASES[case])
    assert_load_refuses(folder, CheckpointFormatError, match=CASES[case])


def test_oversized_index_is_refused_before_reading(tmp_path, good):
    folder = tmp_path / "sharded"
    folder.mkdir()
    sharded_folder(folder, good)
    with open(folder / INDEX_FILENAME, "r+b") as handle:
        handle.truncate(MAX_INDEX_BYTES + 1)  # sparse: no real disk used
    with pytest.raises(CheckpointFormatError, match="more than the"):
        read_checkpoint_headers(folder)
    assert_cli_refuses("inspect", folder, source=folder, match="more than the")
