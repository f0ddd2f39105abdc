"""Stamps: parsing, ordering across lineages, and the metadata keys that carry them."""

import json

import pytest

from xtf_core.checkpoint.stamp import (
    Stamp,
    canonical_json,
    current_stamp,
    read_spec,
    read_stamp,
    stamped_metadata,
)
from xtf_core.errors import CheckpointFormatError, VersionError

SPEC = {"class": "TransformerWrapper", "num_tokens": 256, "attn_layers": {"class": "Decoder", "dim": 8}}


def test_parse_and_format():
    assert Stamp.parse("0.1") == Stamp("xtf", "0.1.0")
    assert str(Stamp.parse("x-transformers==1.26.0")) == "x-transformers==1.26.0"
    assert Stamp.parse(str(Stamp("xtf", "2.0.0rc1"))) == Stamp("xtf", "2.0.0rc1")


def test_legacy_lineage_precedes_xtf():
    assert Stamp("x-transformers", "99.0") < Stamp("xtf", "0.0.1")
    assert Stamp("xtf", "0.2.0") < Stamp("xtf", "0.10.0")
    assert max([Stamp("xtf", "0.1.0"), Stamp("x-transformers", "2.3.1")]) == Stamp("xtf", "0.1.0")


@pytest.mark.parametrize("text", ["pytorch==1.0", "xtf==not-a-version"])
def test_bad_stamps_are_refused(text):
    with pytest.raises(VersionError):
        Stamp.parse(text)


def test_current_stamp_is_installed_version():
    import xtf_core

    assert current_stamp() == Stamp("xtf", xtf_core.__version__)


def test_read_stamp_and_spec():
    metadata = stamped_metadata({}, Stamp("x-transformers", "1.26.0"), SPEC)
    assert read_stamp(metadata, "f") == Stamp("x-transformers", "1.26.0")
    assert read_spec(metadata, "f") == SPEC
    assert metadata["xtf.spec"] == canonical_json(SPEC)
    assert metadata["format"] == "pt" and metadata["xtf.format"] == "1"


def test_lineage_defaults_to_xtf():
    assert read_stamp({"xtf.version": "0.3.0"}, "f") == Stamp("xtf", "0.3.0")


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"xtf.spec": "{}"}, "no xtf.version"),
        ({"xtf.version": "0.1.0", "xtf.format": "2"}, "stamp format"),
        ({"xtf.version": "0.1.0", "xtf.lineage": "keras"}, "lineage"),
    ],
)
def test_read_stamp_rejects(metadata, message):
    with pytest.raises(CheckpointFormatError, match=message):
        read_stamp(metadata, "ckpt.safetensors")


@pytest.mark.parametrize("spec", ["[1, 2]", '{"dim": 3}', '{"class": 3}', "{not json"])
def test_read_spec_rejects(spec):
    with pytest.raises(CheckpointFormatError, match="ckpt.safetensors"):
        read_spec({"xtf.version": "0.1.0", "xtf.spec": spec}, "ckpt.safetensors")


def test_restamp_appends_history_keeps_origin_and_fingerprint():
    first = stamped_metadata({"xtf.fingerprint": '{"x":1}'}, Stamp("x-transformers", "1.26.0"), SPEC)
    record = {
        "id": "xtf==0.1.0",
        "from": "x-transformers==1.26.0",
        "to": "xtf==0.1.0",
        "direction": "upgrade",
    }
    second = stamped_metadata(first, Stamp("xtf", "0.1.0"), {**SPEC, "num_tokens": 512}, [record])
    third = stamped_metadata(second, Stamp("xtf", "0.2.0"), SPEC, [dict(record, id="b")])
    assert json.loads(third["xtf.origin"]) == {"lineage": "x-transformers", "version": "1.26.0"}
    assert [item["id"] for item in json.loads(third["xtf.migrations"])] == ["xtf==0.1.0", "b"]
    assert third["xtf.fingerprint"] == '{"x":1}'
    assert read_stamp(third, "f") == Stamp("xtf", "0.2.0")
