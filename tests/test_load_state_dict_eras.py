"""`model.load_state_dict(old_state_dict)` on an xtf model migrates a plain x-transformers dict of any era.

Each case takes a real release's state dict from the fixture corpus and loads it into a model built from
the release's config. The dict either loads and the model computes what the release computed, or it is
refused naming the releases and the `xtf convert` command; when one era fits but needs other options, the
model built from the spec the error carries loads it and computes the release's outputs.
"""

from __future__ import annotations

import pytest
import torch
from legacy_fixtures import all_fixtures

import xtf_core
from xtf_converters.plain_state import EraMismatchError, migrate_plain_state_dict
from xtf_core.chain import default_chain
from xtf_core.checkpoint.stamp import Stamp
from xtf_core.errors import StateDictMismatchError, XtfError
from xtf_core.model import spec_record

TOLERANCE = 1e-4
CHAIN = default_chain()
PREFERRED = ("dec_plain", "enc_postnorm", "cont_enc", "dec_rmsnorm", "dec_rotary")
# Eras whose dicts have today's names and shapes but another function: names alone cannot tell them apart,
# so a plain load takes them as today's (docs/compatibility.md); the model must be built with the option.
SAME_NAMES_OTHER_FUNCTION = {"x-transformers==1.31.0": {"norm_add_unit_offset": False}}


def _one_per_era() -> list:
    """One fixture from each era the corpus covers (a plain config where there is one)."""
    picked: dict[Stamp, object] = {}
    fixtures = [f for f in all_fixtures() if f.refused is None and f.config["class"] != "XTransformer"]
    for name in PREFERRED:
        for fixture in fixtures:
            node = CHAIN.node_for(Stamp("x-transformers", fixture.release))
            if fixture.name == name and node not in picked:
                picked[node] = fixture
    return sorted(picked.values(), key=lambda f: f.id)


def _state(fixture) -> dict[str, torch.Tensor]:
    return dict(torch.load(fixture.pt, weights_only=True, map_location="cpu"))


@pytest.mark.parametrize("fixture", _one_per_era(), ids=lambda f: f.id)
def test_old_state_dict_loads_or_names_the_fix(fixture) -> None:
    config = fixture.config
    era = str(CHAIN.node_for(Stamp("x-transformers", fixture.release)))
    if era in SAME_NAMES_OTHER_FUNCTION:
        config = {**config, "attn_layers": {**config["attn_layers"], **SAME_NAMES_OTHER_FUNCTION[era]}}
    model = xtf_core.build(config)
    state = _state(fixture)
    try:
        model.load_state_dict(state)
    except EraMismatchError as exc:
        message = str(exc)
        assert "xtf convert STATE.pt --from x-transformers==" in message
        if exc.needed_spec is None:  # several eras compute differently: the user must name the release
            assert "name the release" in message
            return
        model = xtf_core.build(exc.needed_spec)  # the model the error says computes the release's function
        try:
            model.load_state_dict(state)
        except EraMismatchError as again:
            # built that way, the dict fits several eras that compute differently (e.g. 0.5.0-0.17.10 and
            # 0.17.11+ differ only by the position-table scale): the release must be named, and is offered
            assert again.needed_spec is None and "name the release" in str(again)
            assert f" {_era(fixture).version} (before " in str(again)
            return
    assert fixture.max_diff(fixture.run(model.eval())) <= TOLERANCE


def _era(fixture):
    return CHAIN.node_for(Stamp("x-transformers", fixture.release))


def test_current_layout_loads_as_before_without_era_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("a dict in the current layout must not go through era detection")

    monkeypatch.setattr(spec_record, "plain_state_migrator", lambda: never)
    spec = {
        "class": "TransformerWrapper",
        "num_tokens": 16,
        "max_seq_len": 8,
        "attn_layers": {"class": "Decoder", "dim": 8, "depth": 1, "heads": 2},
    }
    source, target = xtf_core.build(spec), xtf_core.build(spec)
    target.load_state_dict(source.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_a_dict_of_no_era_names_the_first_difference() -> None:
    spec = {
        "class": "TransformerWrapper",
        "num_tokens": 16,
        "max_seq_len": 8,
        "attn_layers": {"class": "Decoder", "dim": 8, "depth": 1, "heads": 2},
    }
    model = xtf_core.build(spec)
    state = model.state_dict()
    state["extra.weight"] = torch.zeros(3)
    with pytest.raises(
        StateDictMismatchError, match=r"no x-transformers release .*unexpected 'extra.weight'"
    ):
        model.load_state_dict(state)


def test_non_strict_load_is_torch_s_own() -> None:
    spec = {"class": "Encoder", "dim": 8, "depth": 1, "heads": 2}
    model = xtf_core.build(spec)
    result = model.load_state_dict({"final_norm.gamma": torch.zeros(8)}, strict=False)
    assert "layers.0.1.to_q.weight" in result.missing_keys
    assert torch.equal(model.final_norm.gamma, torch.zeros(8))


def test_a_stamped_file_never_goes_through_era_detection(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stamped file's tensors are in the layout its stamp names: a mismatch is an error, not a guess."""
    from xtf_core.checkpoint.header import read_checkpoint_headers
    from xtf_core.checkpoint.writer import write_tensors
    from xtf_core.loading import read_tensors

    calls: list[object] = []

    def recorded(*args, **kwargs):
        calls.append(args)
        raise StateDictMismatchError("era detection ran")

    monkeypatch.setattr(spec_record, "plain_state_migrator", lambda: recorded)
    spec = {"class": "Encoder", "dim": 8, "depth": 1, "heads": 2}
    path = tmp_path / "m.safetensors"
    xtf_core.save(xtf_core.build(spec), path)
    headers = read_checkpoint_headers(path)
    tensors = read_tensors(headers)
    tensors["stray.weight"] = torch.zeros(2)
    broken = tmp_path / "broken.safetensors"
    write_tensors(broken, {k: v.clone() for k, v in tensors.items()}, headers.metadata)
    with pytest.raises(StateDictMismatchError, match="stray.weight"):
        xtf_core.load(broken)
    assert calls == []


# The model core finds the migrator as a plug-in (entry point group `xtf.plain_state`), never by name.

SMALL = {
    "class": "TransformerWrapper",
    "num_tokens": 16,
    "max_seq_len": 8,
    "attn_layers": {"class": "Decoder", "dim": 8, "depth": 1, "heads": 2},
}


@pytest.fixture
def fresh_lookup():
    """The plug-in lookup starts and ends uncached (a test's fake entry points never outlive it)."""
    spec_record.plain_state_migrator.cache_clear()
    yield
    spec_record.plain_state_migrator.cache_clear()


def _entry_points(*values: str):
    from importlib.metadata import EntryPoint

    points = [
        EntryPoint(f"plugin{i}", value, spec_record.PLAIN_STATE_GROUP) for i, value in enumerate(values)
    ]
    calls: list[str] = []

    def entry_points(*, group: str):
        calls.append(group)
        return [p for p in points if p.group == group]

    return entry_points, calls


def _renamed(model) -> dict[str, torch.Tensor]:
    """The model's own tensors, one of them under a name of no release: a strict load must not take it."""
    state = dict(model.state_dict())
    state["extra.weight"] = torch.zeros(3)
    return state


def test_the_installed_plugin_is_xtf_s_migrator(fresh_lookup) -> None:
    from importlib.metadata import entry_points

    (point,) = entry_points(group=spec_record.PLAIN_STATE_GROUP)
    assert point.value == "xtf_converters.plain_state:migrate_plain_state_dict"
    assert spec_record.plain_state_migrator() is migrate_plain_state_dict


def test_a_load_in_the_model_s_layout_never_reads_entry_points(fresh_lookup, monkeypatch) -> None:
    def refuse(**kwargs):
        raise AssertionError("the fast path must not look up plug-ins")

    monkeypatch.setattr(spec_record, "entry_points", refuse)
    source, target = xtf_core.build(SMALL), xtf_core.build(SMALL)
    target.load_state_dict(source.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_without_a_plugin_a_mismatch_is_torch_s_strict_error(fresh_lookup, monkeypatch) -> None:
    entry_points, _ = _entry_points()
    monkeypatch.setattr(spec_record, "entry_points", entry_points)
    model = xtf_core.build(SMALL)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"extra.weight\"") as caught:
        model.load_state_dict(_renamed(model))
    assert not isinstance(caught.value, XtfError)


def test_the_plugin_is_looked_up_once_and_asked_with_the_model_s_spec(fresh_lookup, monkeypatch) -> None:
    entry_points, calls = _entry_points("xtf_converters.plain_state:migrate_plain_state_dict")
    monkeypatch.setattr(spec_record, "entry_points", entry_points)
    model = xtf_core.build(SMALL)
    for _ in range(2):
        with pytest.raises(StateDictMismatchError, match="state dict for TransformerWrapper: .*extra.weight"):
            model.load_state_dict(_renamed(model))
    assert calls == [spec_record.PLAIN_STATE_GROUP]


def test_two_plugins_are_refused_naming_both(fresh_lookup, monkeypatch) -> None:
    entry_points, _ = _entry_points(
        "xtf_converters.plain_state:migrate_plain_state_dict", "xtf_converters.plain_state:_same"
    )
    monkeypatch.setattr(spec_record, "entry_points", entry_points)
    model = xtf_core.build(SMALL)
    with pytest.raises(XtfError, match=r"several plain state dict migrators .*plugin0 = .*plugin1 = "):
        model.load_state_dict(_renamed(model))
