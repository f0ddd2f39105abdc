"""Hostile `xtf.spec` values: strict JSON, bounded depth, size and values, and sizes the tensors justify.

Each case takes a real checkpoint and replaces only its `xtf.spec` text. Malformed JSON (deep nesting,
NaN, duplicate keys, ...) is refused by every verb and by `load` with one line, before anything is built.
Absurd sizes (`depth: 1000000`, `dim: 10**9`, `num_tokens: 10**12`) are checked against the tensors before
a model is constructed, so `verify` and `load` refuse them at once; header-only verbs finish quickly.
"""

from __future__ import annotations

import json
import time

import parity_configs
import pytest
from hostile import (
    SPEC,
    TIME_LIMIT_S,
    assert_cli_refuses,
    assert_load_refuses,
    good_checkpoint,
    join_file,
    run_all_refusals,
    run_xtf,
    split_file,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xtf_core.checkpoint.stamp import read_spec
from xtf_core.errors import CheckpointFormatError, StateDictMismatchError


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory) -> bytes:
    return good_checkpoint(tmp_path_factory.mktemp("good")).read_bytes()


def with_spec_text(raw: bytes, spec_text: str) -> bytes:
    document, data = split_file(raw)
    document["__metadata__"]["xtf.spec"] = spec_text
    return join_file(document, data)


def spec_with(**layer_changes: object) -> dict:
    return {**SPEC, "attn_layers": {**SPEC["attn_layers"], **layer_changes}}


NESTED = '{"class":"TransformerWrapper","num_tokens":16,"x":' + "[" * 100_000 + "]" * 100_000 + "}"
MALFORMED = {
    "nested_100000_levels": (NESTED, "nested deeper than"),
    "nan_literal": (json.dumps(spec_with(dropout=0.0)).replace("0.0", "NaN"), "NaN"),
    "infinity_literal": (json.dumps(spec_with(dropout=0.0)).replace("0.0", "-Infinity"), "-Infinity"),
    "overflowing_number": (json.dumps(spec_with(dropout=0.0)).replace("0.0", "1e999"), "infinity"),
    "duplicate_key": (json.dumps(SPEC)[:-1] + ', "num_tokens": 17}', "'num_tokens' appears more than once"),
    "int_beyond_any_model": (json.dumps({**SPEC, "num_tokens": 10**20}), "beyond any real model"),
    "long_class_name": (json.dumps({**SPEC, "class": "A" * 50_000}), "is not a class name"),
    "class_4_mib": (json.dumps({**SPEC, "class": "A" * (4 * 2**20)}), "more than the"),
    "not_an_object": ("[1, 2, 3]", "must be a JSON object"),
    "class_not_text": (json.dumps({**SPEC, "class": ["TransformerWrapper"]}), 'string "class"'),
}
EVERY_VERB = {"nested_100000_levels", "nan_literal", "duplicate_key", "class_4_mib"}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_spec_is_refused(tmp_path, good_bytes, case):
    text, match = MALFORMED[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(with_spec_text(good_bytes, text))
    with pytest.raises(CheckpointFormatError) as info:
        read_spec({"xtf.spec": text}, "f")
    assert match in str(info.value) and len(str(info.value)) < 1000
    if case in EVERY_VERB:
        run_all_refusals(path, tmp_path, match=match)
    else:
        out = tmp_path / "out.safetensors"
        assert_cli_refuses("migrate", path, "-o", out, source=path, output=out, match=match)
    assert_load_refuses(path, CheckpointFormatError, match=match)


def test_nested_spec_refused_by_verify(tmp_path, good_bytes):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(with_spec_text(good_bytes, NESTED))
    assert_cli_refuses("verify", path, source=path, match="nested deeper than")


ABSURD = {
    "depth_1000000": (spec_with(depth=1_000_000), "depth=1000000"),
    "dim_1e9": (spec_with(dim=10**9), "attn_layers.dim=1000000000"),
    "num_tokens_1e12": ({**SPEC, "num_tokens": 10**12}, "num_tokens=1000000000000"),
    "heads_1e6": (spec_with(heads=10**6), "heads=1000000"),
    "custom_layers_100000": (spec_with(custom_layers=["a", "f"] * 50_000), "lists 100000 layers"),
}


@pytest.mark.parametrize("case", list(ABSURD))
def test_absurd_sizes_are_checked_before_building(tmp_path, good_bytes, case):
    spec, match = ABSURD[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(with_spec_text(good_bytes, json.dumps(spec)))
    error = assert_load_refuses(path, StateDictMismatchError, match=match)
    assert "does not describe this file" in str(error)
    # header-only verbs read the spec without building anything: they answer quickly, without a traceback
    for args in (("inspect", path), ("migrate", path, "-o", tmp_path / "out.safetensors", "--dry-run")):
        result, elapsed = run_xtf(*args)
        assert elapsed < TIME_LIMIT_S and "Traceback" not in result.stderr, result.stderr[-500:]


def test_absurd_depth_refused_by_verify(tmp_path, good_bytes):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(with_spec_text(good_bytes, json.dumps(spec_with(depth=1_000_000))))
    start = time.monotonic()
    assert_cli_refuses("verify", path, source=path, match="depth=1000000")
    assert time.monotonic() - start < TIME_LIMIT_S


def test_the_fit_check_accepts_the_real_spec(tmp_path, good_bytes):
    """The control: the unchanged spec passes the same check and the model loads."""
    import xtf_core

    path = tmp_path / "good.safetensors"
    path.write_bytes(with_spec_text(good_bytes, json.dumps(SPEC)))
    model = xtf_core.load(path)
    assert model.attn_layers.depth == 1


def test_bounded_messages_for_long_names(tmp_path, good_bytes):
    """A 4 MiB class name that gets past the size bound would still be cut in the message."""
    from xtf_core.errors import SpecError, bounded

    text = bounded("B" * (4 * 2**20))
    assert len(text) < 300 and text.endswith("(4194304 characters)")
    assert len(str(SpecError("x" * 10**6))) < 5000


def with_metadata(raw: bytes, **changes: str) -> bytes:
    document, data = split_file(raw)
    document["__metadata__"].update(changes)
    return join_file(document, data)


def test_origin_of_the_wrong_shape_is_refused_by_inspect(tmp_path, good_bytes):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(with_metadata(good_bytes, **{"xtf.origin": '{"lineage": 5}'}))
    assert_cli_refuses("inspect", path, source=path, match="xtf.origin must be a JSON object")
    assert_cli_refuses("inspect", "--json", path, source=path, match="xtf.origin must be a JSON object")


@pytest.mark.parametrize(
    "fingerprint", ["[1, 2]", '"x"', '{"version": 1, "shape": "x", "samples": "y", "abs_sum": 0}']
)
def test_fingerprint_of_the_wrong_shape_is_refused_by_verify(tmp_path, good_bytes, fingerprint):
    from xtf_core.verification import verify_checkpoint

    path = tmp_path / "bad.safetensors"
    path.write_bytes(with_metadata(good_bytes, **{"xtf.fingerprint": fingerprint}))
    with pytest.raises(CheckpointFormatError, match="xtf.fingerprint must"):
        verify_checkpoint(path)
    if fingerprint == "[1, 2]":
        assert_cli_refuses("verify", path, source=path, match="xtf.fingerprint must")


def test_a_constructor_failing_on_a_value_is_a_spec_error(tmp_path, good_bytes):
    """heads: 0 divides by zero inside the model core: one SpecError line, not a ZeroDivisionError."""
    from xtf_core.errors import SpecError

    path = tmp_path / "bad.safetensors"
    path.write_bytes(with_spec_text(good_bytes, json.dumps(spec_with(heads=0))))
    assert_load_refuses(path, SpecError, match="cannot be built")
    assert_cli_refuses("verify", path, source=path, match="cannot be built")


def test_long_option_names_are_refused_before_any_echo(tmp_path, good_bytes):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(with_spec_text(good_bytes, json.dumps(spec_with(**{"x" * 3000: 1}))))
    error = assert_load_refuses(path, CheckpointFormatError, match="is not an option name")
    assert len(str(error)) < 400


SPEC_STRATEGIES = {
    "token": parity_configs.token_wrapper_spec(),
    "continuous": parity_configs.continuous_wrapper_spec(),
    "xtransformer": parity_configs.xtransformer_spec(),
}


@pytest.mark.parametrize("kind", list(SPEC_STRATEGIES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_fit_check_never_refuses_a_real_model(kind, data):
    """Whatever the supported options, a model's own spec fits its own state dict (built on meta)."""
    from xtf_core.errors import XtfError
    from xtf_core.loading import build_spec_on_meta, check_spec_fits

    spec = data.draw(SPEC_STRATEGIES[kind])
    try:
        model = build_spec_on_meta(spec, "drawn")
    except XtfError:
        assume(False)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    check_spec_fits(spec, shapes, "drawn")
