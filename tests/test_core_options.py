"""Option handling of the xtf core: unsupported options, neutral defaults, spec round trips, class allowlist."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from parity_configs import (
    attn_layers_spec,
    continuous_wrapper_spec,
    layout,
    token_wrapper_spec,
    x_transformers,
    xt_module,
    xtransformer_spec,
)

import xtf_core
from xtf_core.errors import SpecError, UnsupportedOptionError
from xtf_core.spec import canonical_json


def _layers(cls: str = "Decoder", **kw: Any) -> dict[str, Any]:
    return {"class": cls, "dim": 16, "depth": 1, "heads": 2, "attn_dim_head": 8, **kw}


def _tw(layers: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return {
        "class": "TransformerWrapper",
        "num_tokens": 20,
        "max_seq_len": 8,
        "attn_layers": layers or _layers(),
        **kw,
    }


def _ctw(layers: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return {
        "class": "ContinuousTransformerWrapper",
        "max_seq_len": 8,
        "attn_layers": layers or _layers(),
        **kw,
    }


def _xt(**kw: Any) -> dict[str, Any]:
    return {
        "class": "XTransformer",
        "dim": 16,
        "enc_num_tokens": 20,
        "enc_max_seq_len": 8,
        "enc_depth": 1,
        "enc_heads": 2,
        "enc_attn_dim_head": 8,
        "dec_num_tokens": 20,
        "dec_max_seq_len": 8,
        "dec_depth": 1,
        "dec_heads": 2,
        "dec_attn_dim_head": 8,
        **kw,
    }


# ---------------------------------------------------------------------------------------------- unsupported

UNSUPPORTED = [
    ("attn_rotate_num_heads", _tw(_layers(attn_rotate_num_heads=1))),
    ("attn_flash_pack_seq", _tw(_layers(attn_flash_pack_seq=True))),
    ("ff_output_proj_depth", _tw(_layers(ff_output_proj_depth=2))),
    ("attn_talking_heads", _layers("Encoder", attn_talking_heads=True)),
    ("cross_attn_hybrid_fold_axial_dim", _layers(cross_attend=True, cross_attn_hybrid_fold_axial_dim=2)),
    ("ff_output_proj_depth", _layers(ff_output_proj_depth=1)),
    ("rel_pos_kwargs", _layers(rel_pos_bias=True, rel_pos_kwargs={"num_buckets": 8})),
    ("attn_qkv_receive_diff_residuals", _layers(attn_qkv_receive_diff_residuals=True)),
    ("attn_output_proj_depth", _layers(attn_output_proj_depth=2)),
    ("not_an_option", _layers(not_an_option=1)),
    ("attn_not_an_option", _layers(attn_not_an_option=1)),
    ("foo", _tw(foo=1)),
    ("recycling", _tw(recycling=True)),  # l2norm_embed, num_output_heads, probabilistic are supported now
    ("ff_deep_embed", _tw(ff_deep_embed=True)),
    ("bar", _ctw(bar=None)),
    ("attn_rotate_num_heads", _xt(enc_attn_rotate_num_heads=1)),
    ("attn_flash_pack_seq", _xt(dec_attn_flash_pack_seq=True)),
    ("baz", _xt(baz=3)),
    ("attn_learned_value_residual_mix", _xt(dec_attn_learned_value_residual_mix=True)),
    ("attn_talking_heads", _layers(attn_talking_heads=0)),  # a number is not a flag's default
]


@pytest.mark.parametrize(
    ("option", "spec"), UNSUPPORTED, ids=[f"{i}-{o}" for i, (o, _) in enumerate(UNSUPPORTED)]
)
def test_unsupported_option_raises_naming_it(option, spec):
    with pytest.raises(UnsupportedOptionError, match=rf"'{option}'"):
        xtf_core.build(spec)


def test_unsupported_option_error_is_a_spec_error():
    assert issubclass(UnsupportedOptionError, SpecError)


def test_unsupported_option_on_direct_construction():
    with pytest.raises(UnsupportedOptionError, match="'attn_rotate_num_heads'"):
        xtf_core.Decoder(dim=16, depth=1, attn_rotate_num_heads=1)
    with pytest.raises(UnsupportedOptionError, match="'unknown_kwarg'"):
        xtf_core.TransformerWrapper(
            num_tokens=10, max_seq_len=8, attn_layers=xtf_core.Decoder(dim=16, depth=1), unknown_kwarg=True
        )


def test_per_layer_option_values_are_rejected():
    with pytest.raises(UnsupportedOptionError, match="attn_kv_heads"):
        xtf_core.build(_layers(attn_kv_heads=[1, 2]))


# ---------------------------------------------------------------------------------------------- neutral defaults

NEUTRAL = [
    _tw(_layers(macaron=False, attn_num_mem_kv=0, ff_post_act_ln=False, shift_tokens=0)),
    _tw(_layers(cross_attend=True, cross_attn_num_mem_kv=0, cross_attn_talking_heads=False)),
    _tw(_layers(layer_dropout=0, scale_residual_constant=1, use_layerscale=False, attn_sparse_topk=None)),
    _tw(l2norm_embed=False, num_output_heads=1, shift_mem_down=0, token_emb=None, to_logits=None),
    _ctw(probabilistic=False, project_in=None, project_out=None),
    _xt(enc_macaron=False, dec_attn_num_mem_kv=0, cross_attn_tokens_dropout=0.0),
]


@pytest.mark.parametrize("spec", NEUTRAL, ids=[str(i) for i in range(len(NEUTRAL))])
def test_neutral_defaults_are_accepted_and_change_nothing(spec):
    def strip(node: Any) -> Any:
        neutral = {
            "macaron", "attn_num_mem_kv", "ff_post_act_ln", "shift_tokens", "cross_attn_num_mem_kv",
            "cross_attn_talking_heads", "layer_dropout", "scale_residual_constant", "use_layerscale",
            "attn_sparse_topk", "l2norm_embed", "num_output_heads", "shift_mem_down", "token_emb", "to_logits",
            "probabilistic", "project_in", "project_out", "enc_macaron", "dec_attn_num_mem_kv",
        }  # fmt: skip
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in neutral}
        return node

    torch.manual_seed(0)
    with_defaults = xtf_core.build(spec)
    torch.manual_seed(0)
    plain = xtf_core.build(strip(spec))
    assert layout(with_defaults) == layout(plain)
    for (name, a), (_, b) in zip(with_defaults.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name


def _reference_defaults(cls: type, skip: set[str]) -> list[tuple[str, Any]]:
    return [
        (name, p.default)
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name not in skip
        and p.default is not inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


_SKIP = {"self", "dim", "depth", "heads", "causal", "kwargs"}
REFERENCE_DEFAULTS = (
    [("layers", n, v) for n, v in _reference_defaults(xt_module.AttentionLayers, _SKIP)]
    + [("layers", f"attn_{n}", v) for n, v in _reference_defaults(xt_module.Attention, _SKIP)]
    + [("layers", f"cross_attn_{n}", v) for n, v in _reference_defaults(xt_module.Attention, _SKIP)]
    + [("layers", f"ff_{n}", v) for n, v in _reference_defaults(xt_module.FeedForward, _SKIP)]
    + [
        ("tw", n, v)
        for n, v in _reference_defaults(
            x_transformers.TransformerWrapper, _SKIP | {"num_tokens", "max_seq_len"}
        )
    ]
    + [("ctw", n, v) for n, v in _reference_defaults(x_transformers.ContinuousTransformerWrapper, _SKIP)]
)


def test_every_reference_option_is_accepted_at_its_default():
    """Any x-transformers 2.31.10 constructor option spelled out at its default builds the same model."""
    plain = {"layers": _layers(cross_attend=True), "tw": _tw(), "ctw": _ctw()}
    plain_layouts = {k: layout(xtf_core.build(v)) for k, v in plain.items()}
    refused = []
    for where, name, default in REFERENCE_DEFAULTS:
        if name in plain[where] or name.replace("cross_attn_", "attn_", 1) in plain[where]:
            continue  # the plain spec sets it (attn_dim_head, cross_attend)
        spec = {**plain[where], name: default}
        try:
            model = xtf_core.build(spec)
        except SpecError as err:
            refused.append(f"{where}.{name}={default!r}: {err}")
            continue
        assert layout(model) == plain_layouts[where], f"{where}.{name}={default!r} changed the layout"
    assert not refused, "\n".join(refused)
    assert len(REFERENCE_DEFAULTS) > 200


# ---------------------------------------------------------------------------------------------- spec round trip

ROUND_TRIP = [
    _layers("Encoder"),
    _layers("Decoder", rotary_pos_emb=True, rotary_xpos=True, rotary_xpos_scale_base=64),
    {"class": "CrossAttender", "dim": 16, "depth": 2},
    _tw(_layers(custom_layers=["f", "a", "f"], use_rmsnorm=True), num_memory_tokens=2, max_mem_len=4),
    _tw(_layers("Encoder", alibi_pos_bias=True, alibi_num_heads=1, attn_kv_heads=1), tie_embedding=True),
    _tw(_layers(par_ratio=2, depth=2, sandwich_norm=True, attn_qk_norm=True), emb_dim=8, post_emb_norm=True),
    _ctw(_layers("Encoder", rel_pos_bias=True, pre_norm=False), dim_in=4, dim_out=3),
    _xt(tie_token_emb=True, dec_rotary_pos_emb=True, enc_ff_glu=True),
    _tw(_layers(macaron=False, attn_num_mem_kv=0)),  # neutral defaults are kept in the spec
]


def _check_round_trip(spec: dict[str, Any]) -> None:
    model = xtf_core.build(spec)
    recorded = xtf_core.spec_of(model)
    assert recorded == spec
    assert json.loads(canonical_json(recorded)) == spec
    assert layout(xtf_core.build(recorded)) == layout(model)


@pytest.mark.parametrize("spec", ROUND_TRIP, ids=[s["class"] + str(i) for i, s in enumerate(ROUND_TRIP)])
def test_spec_of_build_round_trips(spec):
    _check_round_trip(spec)


def test_spec_of_is_a_copy():
    model = xtf_core.build(_tw())
    xtf_core.spec_of(model)["attn_layers"]["dim"] = 99
    assert xtf_core.spec_of(model)["attn_layers"]["dim"] == 16


def _valid(strategy: Any) -> Any:
    def builds(spec: dict[str, Any]) -> bool:
        try:
            xtf_core.build(spec)
        except (SpecError, ValueError, AssertionError, ZeroDivisionError):
            return False
        return True

    return strategy.filter(builds)


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(
    spec=st.one_of(
        _valid(token_wrapper_spec()),
        _valid(continuous_wrapper_spec(max_mem_len=3)),
        _valid(xtransformer_spec()),
        _valid(attn_layers_spec("CrossAttender")),
        _valid(attn_layers_spec("Decoder", cross_attend=True)),
    )
)
def test_spec_of_build_round_trips_for_drawn_specs(spec):
    _check_round_trip(spec)


# ---------------------------------------------------------------------------------------------- allowlist

BAD_SPECS = {
    "unknown_top_class": ({"class": "Transformer", "dim": 8}, "unknown class 'Transformer'"),
    "python_path": ({"class": "torch.nn.Linear", "in_features": 2}, "unknown class"),
    "builtin_name": ({"class": "__import__"}, "unknown class"),
    "no_class": ({"dim": 8, "depth": 1}, "no string 'class'"),
    "class_not_string": ({"class": 3}, "no string 'class'"),
    "not_a_mapping": (["TransformerWrapper"], "must be an object"),
    "nested_unknown": (
        _tw({"class": "Linear", "in_features": 2, "out_features": 2}),
        "unknown class 'Linear'",
    ),
    "nested_wrapper": (_tw(_tw()), "unknown class 'TransformerWrapper'"),
    "nested_python_path": (_tw({"class": "os.system", "command": "true"}), "unknown class 'os.system'"),
    "nested_not_attn_layers": (_tw(token_emb=_layers()), "only 'attn_layers' .*may hold a nested model"),
    "continuous_nested_xtransformer": (_ctw(_xt()), "unknown class 'XTransformer'"),
    "attn_layers_without_class": (_tw({"dim": 16, "depth": 1}), "attn_layers"),
}


@pytest.mark.parametrize("name", sorted(BAD_SPECS))
def test_build_rejects_non_allowlisted_classes(name):
    spec, message = BAD_SPECS[name]
    with pytest.raises(SpecError, match=message):
        xtf_core.build(spec)


def test_spec_of_rejects_foreign_modules():
    with pytest.raises(SpecError):
        xtf_core.spec_of(torch.nn.Linear(2, 2))
    with pytest.raises(SpecError):
        xtf_core.spec_of(x_transformers.Decoder(dim=8, depth=1))


@pytest.mark.parametrize(
    "options",
    [
        {"alibi_pos_bias": True, "dynamic_pos_bias": True},
        {"use_rmsnorm": True, "use_dynamic_tanh": True},
        {"use_simple_rmsnorm": True, "use_adaptive_rmsnorm": True, "dim_condition": 8},
        {"orthog_residual": True, "mv_split_residual": True},
        {"use_layerscale": True, "use_adaptive_layerscale": True, "dim_condition": 8},
    ],
    ids=["position-biases", "norms", "adaptive-norms", "residuals", "layerscales"],
)
def test_exclusive_options_are_refused_naming_both(options):
    chosen = [name for name, value in options.items() if value is True]
    with pytest.raises(SpecError, match="choose at most one of") as refused:
        xtf_core.Decoder(dim=16, depth=1, heads=2, **options)
    assert all(name in str(refused.value) for name in chosen)
