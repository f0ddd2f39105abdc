"""Malformed safetensors headers: refused by every reader, at least as strictly as safetensors' own parser.

Each case starts from a real checkpoint saved by `xtf_core.save` and breaks one rule; `inspect`,
`inspect --json` and `migrate -o` must refuse it with one `error:` line, write nothing and leave the source
unchanged, and `xtf_core.load` must raise CheckpointFormatError. A seeded generator then truncates, flips
and mutates real files: whatever xtf's reader accepts, safetensors accepts too.
"""

from __future__ import annotations

import json
import random
import struct
import time

import pytest
from hostile import (
    assert_cli_refuses,
    assert_load_refuses,
    good_checkpoint,
    join_file,
    run_all_refusals,
    split_file,
)
from safetensors import SafetensorError, safe_open

from xtf_core.checkpoint.header import read_header
from xtf_core.errors import CheckpointFormatError


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory) -> bytes:
    return good_checkpoint(tmp_path_factory.mktemp("good")).read_bytes()


def first_tensor(document: dict) -> str:
    return next(name for name in document if name != "__metadata__")


def header_text_with_duplicate_spec(document: dict) -> str:
    """The header JSON with a second `xtf.spec` key in __metadata__ (what a hand-made file could hold)."""
    metadata = document["__metadata__"]
    evil = dict(json.loads(metadata["xtf.spec"]), num_tokens=99)
    pairs = ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in metadata.items())
    pairs += f',"xtf.spec":{json.dumps(json.dumps(evil))}'
    tensors = ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in document.items() if k != "__metadata__")
    return '{"__metadata__":{' + pairs + "}," + tensors + "}"


def shifted(document: dict, start: int) -> dict:
    """Every tensor from the one at data offset `start` on moved 4 bytes later (a gap before it)."""
    out = {}
    for name, entry in document.items():
        if name != "__metadata__" and entry["data_offsets"][0] >= start:
            entry = dict(entry, data_offsets=[entry["data_offsets"][0] + 4, entry["data_offsets"][1] + 4])
        out[name] = entry
    return out


def mutate(raw: bytes, case: str) -> bytes:
    document, data = split_file(raw)
    header = raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]]
    name = first_tensor(document)
    offsets = sorted(e["data_offsets"][0] for k, e in document.items() if k != "__metadata__")
    if case == "length_plus_one":
        return join_file(header, data, size_delta=+1)
    if case == "length_minus_one":
        return join_file(header, data, size_delta=-1)
    if case == "trailing_bytes":
        return raw + b"\0\0\0\0"
    if case == "gap":
        return join_file(shifted(document, offsets[1]), data[: offsets[1]] + b"\0" * 4 + data[offsets[1] :])
    if case == "gap_at_start":
        return join_file(shifted(document, 0), b"\0" * 4 + data)
    if case == "overlap":
        entry = document[name]
        begin, end = entry["data_offsets"]
        other = next(
            k for k, e in document.items() if k not in ("__metadata__", name) and e["data_offsets"][0] == end
        )
        moved = document[other]
        document[other] = dict(
            moved, data_offsets=[moved["data_offsets"][0] - 4, moved["data_offsets"][1] - 4]
        )
        return join_file(document, data)
    if case == "duplicate_spec_key":
        return join_file(header_text_with_duplicate_spec(document), data)
    if case == "duplicate_tensor_key":
        text = header.decode().rstrip(" ")
        return join_file(text[:-1] + f",{json.dumps(name)}:{json.dumps(document[name])}" + "}", data)
    if case == "duplicate_metadata_block":
        text = header.decode().rstrip(" ")
        return join_file('{"__metadata__":{"format":"pt"},' + text[1:], data)
    if case == "dtype_list":
        document[name] = dict(document[name], dtype=["F32"])
        return join_file(document, data)
    if case == "dtype_unknown":
        document[name] = dict(document[name], dtype="F33")
        return join_file(document, data)
    if case == "shape_bools":
        document[name] = dict(document[name], shape=[True] * len(document[name]["shape"]))
        return join_file(document, data)
    if case == "shape_10000_dims":
        document[name] = dict(document[name], shape=[1] * 10_000)
        return join_file(document, data)
    if case == "shape_overflowing_strides":
        document[name] = dict(document[name], shape=[0, 10**18, 10**18], data_offsets=[0, 0])
        return join_file(document, data)
    if case == "offsets_float":
        document[name] = dict(document[name], data_offsets=[float(v) for v in document[name]["data_offsets"]])
        return join_file(document, data)
    if case == "offsets_huge_int":
        document[name] = dict(document[name], data_offsets=[0, 987654321987])
        return join_file(json.dumps(document).replace("987654321987", "9" * 5000), data)
    if case == "metadata_not_text":
        document["__metadata__"] = dict(document["__metadata__"], extra=1)
        return join_file(document, data)
    if case == "extra_entry_field":
        document[name] = dict(document[name], evil="x")
        return join_file(document, data)
    if case == "nan_literal":
        return join_file(json.dumps(document).replace('"shape": [', '"shape": [NaN, ', 1), data)
    if case == "deeply_nested":
        return join_file(json.dumps(document)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}", data)
    if case == "leading_space":
        return join_file(b" " + header, data)
    if case == "not_utf8":
        return join_file(b'{"\xff":1}', data)
    if case == "header_too_big":
        return struct.pack("<Q", 2**63) + raw[8:]
    if case == "truncated_data":
        return raw[:-3]
    raise AssertionError(case)


CASES = [
    ("length_plus_one", "header"),
    ("length_minus_one", "header"),
    ("trailing_bytes", "trailing bytes"),
    ("gap", "belong to no tensor"),
    ("gap_at_start", "belong to no tensor"),
    ("overlap", "overlaps"),
    ("duplicate_spec_key", "'xtf.spec' appears more than once"),
    ("duplicate_tensor_key", "appears more than once"),
    ("duplicate_metadata_block", "'__metadata__' appears more than once"),
    ("dtype_list", "unknown dtype ['F32']"),
    ("dtype_unknown", "unknown dtype 'F33'"),
    ("shape_bools", "non-negative integers"),
    ("shape_10000_dims", "at most 64"),
    ("shape_overflowing_strides", "more elements than a tensor can index"),
    ("offsets_float", "data_offsets"),
    ("offsets_huge_int", "not valid JSON"),
    ("metadata_not_text", "strings to strings"),
    ("extra_entry_field", "exactly dtype, shape, data_offsets"),
    ("nan_literal", "NaN"),
    ("deeply_nested", "nested deeper"),
    ("leading_space", "does not start with"),
    ("not_utf8", "UTF-8"),
    ("header_too_big", "larger than the file"),
    ("truncated_data", "run past"),
]
# safetensors 0.8 accepts these (last duplicate wins, unknown fields ignored, leading whitespace skipped)
STRICTER_THAN_SAFETENSORS = {
    "duplicate_spec_key",
    "duplicate_tensor_key",
    "extra_entry_field",
    "leading_space",
}
# These go through every verb (a process each); the rest through `migrate` (the verb that writes) and load.
ALL_VERBS = {"length_plus_one", "trailing_bytes", "gap", "duplicate_spec_key", "dtype_list", "deeply_nested"}


@pytest.mark.parametrize(("case", "match"), CASES, ids=[case for case, _ in CASES])
def test_bad_header_is_refused(tmp_path, good_bytes, case, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(mutate(good_bytes, case))
    if case not in STRICTER_THAN_SAFETENSORS:
        with pytest.raises(SafetensorError), safe_open(str(path), "np"):
            pass
    with pytest.raises(CheckpointFormatError) as info:
        read_header(path)
    assert match in str(info.value)
    assert len(str(info.value)) < 1000
    if case in ALL_VERBS:
        run_all_refusals(path, tmp_path, match=match)
    else:
        out = tmp_path / "out.safetensors"
        assert_cli_refuses("migrate", path, "-o", out, source=path, output=out, match=match)
    assert_load_refuses(path, CheckpointFormatError, match=match)


def test_bad_header_refused_by_verify(tmp_path, good_bytes):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(mutate(good_bytes, "gap"))
    assert_cli_refuses("verify", path, source=path, match="belong to no tensor")


def test_good_file_passes_the_same_checks(tmp_path, good_bytes):
    """The control: the unmutated file is read, inspected and loaded."""
    import xtf_core

    path = tmp_path / "good.safetensors"
    path.write_bytes(good_bytes)
    assert read_header(path).data_start + read_header(path).data_bytes == len(good_bytes)
    xtf_core.load(path)


def test_padding_spaces_are_accepted_like_safetensors(tmp_path, good_bytes):
    document, data = split_file(good_bytes)
    path = tmp_path / "padded.safetensors"
    path.write_bytes(join_file(json.dumps(document) + " " * 13, data))
    assert len(read_header(path).tensors) == len(document) - 1
    with safe_open(str(path), "np") as handle:
        assert len(list(handle.keys())) == len(document) - 1


# --------------------------------------------------------------------------- fuzz-ish generator

FUZZ_CASES = 150
FUZZ_SECONDS = 20.0


def fuzz_variants(raw: bytes, count: int, seed: int = 1234):
    """Seeded malformed variants of a real file: truncations, byte flips, header-length lies, JSON edits."""
    rng = random.Random(seed)
    document, data = split_file(raw)
    text = json.dumps(document)
    for i in range(count):
        kind = i % 6
        if kind == 0:
            yield f"truncate{i}", raw[: rng.randrange(len(raw))]
        elif kind == 1:
            flipped = bytearray(raw)
            for _ in range(rng.randint(1, 4)):
                flipped[rng.randrange(min(len(raw), 8 + len(text) + 8))] ^= 1 << rng.randrange(8)
            yield f"flip{i}", bytes(flipped)
        elif kind == 2:
            yield f"length{i}", join_file(text, data, size_delta=rng.choice([-7, -2, -1, 1, 2, 9, 4096]))
        elif kind == 3:
            position = rng.randrange(len(text))
            token = rng.choice(
                ['"', "{", "}", "[", "]", ",", ":", "NaN", "-1", "1e999", "null", "true", "\\"]
            )
            yield f"insert{i}", join_file(text[:position] + token + text[position:], data)
        elif kind == 4:
            position = rng.randrange(len(text))
            yield f"delete{i}", join_file(text[:position] + text[position + rng.randint(1, 5) :], data)
        else:
            digits = [j for j, c in enumerate(text) if c.isdigit()]
            j = rng.choice(digits)
            yield f"digit{i}", join_file(text[:j] + str(rng.randrange(10)) + text[j + 1 :], data)


def test_fuzzed_headers_never_escape_the_error_contract(tmp_path, good_bytes):
    """Every variant is refused with CheckpointFormatError or accepted; whatever xtf accepts, safetensors
    accepts too (xtf is at least as strict), and the accepted header covers the file exactly."""
    start = time.monotonic()
    path = tmp_path / "fuzz.safetensors"
    refused = 0
    for label, variant in fuzz_variants(good_bytes, FUZZ_CASES):
        path.write_bytes(variant)
        try:
            header = read_header(path)
        except CheckpointFormatError as exc:
            refused += 1
            assert "\n" not in str(exc) and len(str(exc)) < 1000, label
            continue
        assert header.data_start + header.data_bytes == len(variant), label
        with safe_open(str(path), "np") as handle:  # raises if safetensors refuses what xtf accepted
            assert sorted(handle.keys()) == sorted(header.tensors), label
        assert time.monotonic() - start < FUZZ_SECONDS
    assert refused > FUZZ_CASES // 2
    assert time.monotonic() - start < FUZZ_SECONDS


def test_fuzzed_files_through_the_cli(tmp_path, good_bytes):
    """A few refused variants through `migrate` (a process each): one line, nothing written."""
    path = tmp_path / "fuzz.safetensors"
    out = tmp_path / "out.safetensors"
    tried = 0
    for _, variant in fuzz_variants(good_bytes, 60, seed=99):
        path.write_bytes(variant)
        try:
            read_header(path)
            continue
        except CheckpointFormatError:
            pass
        assert_cli_refuses("migrate", path, "-o", out, source=path, output=out)
        tried += 1
        if tried == 4:
            break
    assert tried == 4


@pytest.mark.parametrize(
    ("text", "duplicate"),
    [
        (
            '{"a" : {"dtype":"U8","shape":[1],"data_offsets":[0,1]}, "a" :{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
            True,
        ),
        (
            '{"a\\\\":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a\\\\":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
            True,
        ),
        (
            '{"__metadata__":{"k\\\\":"v","k\\\\":"w"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
            True,
        ),
        ('{"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}', True),
        (
            '{"__metadata__":{"s":"{\\"x\\": 1, \\"x\\": 2}"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
            False,
        ),
        ('{"a\\\\" : {"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', False),
        ('{"__metadata__":{"k":"\\\\\\":"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', False),
    ],
)
def test_duplicate_keys_are_found_however_the_header_is_spelled(tmp_path, text, duplicate):
    """The quick key count and the exact parser agree: spaces before colons, keys ending in a backslash and
    escaped quotes inside metadata values neither hide a repeated key nor invent one."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(join_file(text, b"\0"))
    if duplicate:
        with pytest.raises(CheckpointFormatError, match="appears more than once"):
            read_header(path)
    else:
        assert list(read_header(path).tensors) == [next(iter(json.loads(text).keys() - {"__metadata__"}))]
