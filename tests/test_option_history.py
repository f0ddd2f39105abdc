"""Issue 10's option families across their own history, against the real releases, both ways.

For one release per era an option lives in, the release builds each config (`tests/option_families.py`),
perturbs and runs it; the state dict converts, computes the release's output (<= 1e-4 on unpadded
positions), migrates to the installed xtf, exports back, and the release loads the export with
strict=True and reproduces its output. Ranges where a release ran an option differently or not at all are
refused by name (`converters/option_history.py`, and the 1.27.0 step for `ff_post_act_ln`).

One build subprocess and one check subprocess per release. `EXTENDED` (more releases per family, the
sweep the boundaries were found with) runs with XTF_RELEASE_TESTS=1.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from option_families import FAMILIES, TOLERANCE, build_in_release, convert_and_run, export_and_check

import xtf_migrations.xt_1_31_8_layerscale_offset as layerscale_step
import xtf_migrations.xt_1_39_0_talking_heads_residual as talking_step
from xtf_converters import option_history
from xtf_core.chain import Step
from xtf_core.errors import ConversionError
from xtf_core.testing import round_trip

extended = pytest.mark.skipif(
    os.environ.get("XTF_RELEASE_TESTS") != "1", reason="set XTF_RELEASE_TESTS=1 (installs releases)"
)

SPECS = {name: (spec, flags) for configs in FAMILIES.values() for name, spec, flags in configs}

# release -> configs that convert and export back exactly (one release per era of the options they use)
BOTH_WAYS = {
    # 0.0.29-0.3.x: one memory-kv config beside the talking-heads refusal
    "0.0.29": ["dec_mem_kv"],
    # 0.5.0-0.6.3: before the GEGLU fix, after the kv split; macaron runs, attention-on-attention is Linear+GLU
    "0.5.0": [
        "dec_mem_kv",
        "enc_mem_kv",
        "dec_macaron",
        "enc_macaron_post",
        "dec_macaron_cross",
        "dec_on_attn",
        "cross_on_attn",
        "dec_sparse_topk",
        "dec_cross_res_attn",
        "cross_attn_mem_kv_shared",
        "dec_talking_old",
    ],
    # 0.20.8: macaron runs again; token shift, residual scaling and gating, head scale, local attention
    "0.20.8": [
        "dec_macaron",
        "dec_shift",
        "dec_scale_res",
        "dec_gate_res",
        "dec_head_scale",
        "dec_attend_past",
        "dec_talking_old",
    ],
    # 0.33.1 (0.31.2-1.0.3): qk-norm logits scaled by 1 by default (step 1.0.4 pins it)
    "0.33.1": ["dec_qk_groups", "dec_on_attn", "dec_gate_res", "dec_one_kv"],
    # 1.0.4 (0.33.1-1.14 era): the renamed feed-forward under macaron and shift wrappers, one kv head, l2norm embed
    "1.0.4": [
        "dec_macaron_cross",
        "dec_shift",
        "dec_scale_res_const",
        "dec_one_kv",
        "dec_l2norm_embed",
        "dec_shift_mem_down",
        "enc_mem_kv",
        "dec_talking_old",
        "dec_qk_groups",
    ],
    # 1.27.1: after the bias-less LayerNorm; the feed-forward's post-activation norm converts from here
    "1.27.1": [
        "dec_macaron",
        "enc_shift",
        "dec_post_act_ln",
        "dec_talking_old",
        "dec_dyn_pos",
        "dec_mem_interspersed",
        "dec_weight_tie",
        "dec_execute_order",
    ],
    # 1.30.18-1.30.23: conditioned norms cross the LayerNorm renames of 1.31.0 untouched
    "1.30.23": ["dec_adaptive_ln", "dec_adaptive_rms", "dec_output_heads"],
    # 1.31.3-1.31.7: the unit offset is on for the norms but not yet for the layer scale (step 1.31.8)
    "1.31.5": ["dec_layerscale", "dec_macaron"],
    # 1.42.18-1.42.27: a fixed 0.5 value-residual mix (step 1.42.28); talking heads under today's names (1.42.27
    # itself also builds an unused value-residual mix in cross-attention blocks: a one-release layout)
    "1.42.26": [
        "dec_value_residual",
        "dec_talking",
        "dec_layerscale",
        "dec_post_act_ln",
        "enc_cls",
        "enc_avg_pool",
        "cross_mem_kv",
        "dec_softclamp_output",
    ],
}

# more releases, run with XTF_RELEASE_TESTS=1
EXTENDED = {
    "2.3.0": ["cont_probabilistic", "dec_softclamp_output", "cross_mem_kv"],
    "0.3.5": ["dec_mem_kv", "dec_macaron", "dec_macaron_cross", "dec_on_attn", "dec_sparse_topk"],
    "1.26.0": ["dec_macaron", "enc_macaron_post", "dec_shift", "enc_shift", "dec_mem_kv", "enc_mem_kv"],
    "1.44.8": ["dec_macaron", "dec_shift", "dec_post_act_ln", "dec_mem_kv", "dec_talking", "dec_layerscale"],
}

# release -> {config: words its refusal names}: built in the same subprocess as BOTH_WAYS[release]
REFUSED = {
    "0.0.29": {
        "dec_talking_old": "attn_pre_talking_heads"
    },  # post-softmax mix before the softmax up to 0.2.4
    "0.20.8": {"dec_post_act_ln": "ff_post_act_ln"},  # a biased post-activation norm before 1.27.0
    "1.0.4": {"dec_dyn_pos": "dynamic_pos_bias"},  # ReLU position MLP up to 1.6.3
    "1.27.1": {"dec_sparse_topk": "attn_sparse_topk"},  # inverted top-k mask 1.16.19-1.37.9
}


def _both_ways(tmp_path: Path, release: str, names: list[str], refused: dict[str, str] | None = None) -> None:
    refused = refused or {}
    configs = [(name, *SPECS[name]) for name in [*names, *refused]]
    built = build_in_release(release, configs, tmp_path)
    failed = {name: result["error"] for name, result in built.items() if not result["ok"]}
    assert not failed, f"x-transformers {release} did not run: {failed}"
    exports, diffs = {}, {}
    for name, spec, _ in configs:
        if name in refused:
            with pytest.raises(ConversionError, match=refused[name]):
                convert_and_run(release, name, spec, tmp_path)
            continue
        diffs[name], exports[name] = convert_and_run(release, name, spec, tmp_path)
    assert all(d <= TOLERANCE for d in diffs.values()), f"converted outputs differ: {diffs}"
    checked = export_and_check(release, exports, {name: spec for name, spec, _ in configs}, tmp_path)
    bad = {k: v for k, v in checked.items() if not isinstance(v, float) or v > TOLERANCE}
    assert set(checked) == set(exports) and not bad, f"x-transformers {release} on the export: {bad}"


@pytest.mark.parametrize("release", sorted(BOTH_WAYS), ids=str)
def test_old_checkpoints_with_the_option_convert_and_export_back(tmp_path: Path, release: str) -> None:
    _both_ways(tmp_path, release, BOTH_WAYS[release], REFUSED.get(release))


@extended
@pytest.mark.parametrize("release", sorted(EXTENDED), ids=str)
def test_more_releases_per_family(tmp_path: Path, release: str) -> None:
    _both_ways(tmp_path, release, EXTENDED[release])


def test_refused_ranges_name_the_option_and_the_reason() -> None:
    """The table alone (no release needed): inside a range the option is refused, outside it passes."""
    for entry in option_history.REFUSED:
        spec = {"class": "TransformerWrapper", "attn_layers": {"class": "Decoder", entry.option: True}}
        with pytest.raises(ConversionError, match=entry.option):
            option_history.check(spec, entry.last, "x.pt")
        option_history.check({"class": "Decoder", entry.option: False}, entry.last, "x.pt")


def _decoder(**layer: object) -> dict:
    return {
        "class": "TransformerWrapper",
        "num_tokens": 8,
        "attn_layers": {"class": "Decoder", "dim": 4, "depth": 1, "heads": 2, **layer},
    }


def test_step_talking_heads_residual_subtracts_the_identity() -> None:
    """1.39.0: `sim + conv(sim)` computes what `conv(sim)` did when the stored weight loses the identity."""
    spec = _decoder(attn_pre_talking_heads=True, attn_post_talking_heads=True)
    pre, post = torch.randn(2, 2, 1, 1), torch.randn(2, 2, 1, 1)
    old = {
        "attn_layers.layers.0.1.attend.pre_softmax_talking_heads.weight": pre,
        "attn_layers.layers.0.1.attend.post_softmax_talking_heads.weight": post,
    }
    new, new_spec, back, back_spec = round_trip(Step.from_module(talking_step), old, spec)
    eye = torch.eye(2).reshape(2, 2, 1, 1)
    assert torch.allclose(new["attn_layers.layers.0.1.attend.pre_softmax_talking_heads.weight"], pre - eye)
    assert torch.equal(new["attn_layers.layers.0.1.attend.post_softmax_talking_heads.weight"], post)
    assert back_spec == spec and all(torch.allclose(back[k], old[k]) for k in old)
    sim = torch.randn(1, 2, 3, 3)
    conv = torch.nn.functional.conv2d
    weight = new["attn_layers.layers.0.1.attend.pre_softmax_talking_heads.weight"]
    assert torch.allclose(sim + conv(sim, weight), conv(sim, pre), atol=1e-6)


def test_step_layerscale_offset_only_where_the_unit_offset_is_on() -> None:
    """1.31.8: with the unit offset on, the stored layer scale is `gamma - 1`; pinned-off stacks are untouched."""
    names = ["attn_layers.layers.0.1.gamma", "attn_layers.layers.1.1.gamma"]
    old = {name: torch.randn(4) for name in names}
    step = Step.from_module(layerscale_step)
    new, _, back, _ = round_trip(step, old, _decoder(use_layerscale=True))
    assert all(torch.allclose(new[n], old[n] - 1) for n in names)
    assert all(torch.allclose(back[n], old[n]) for n in names)
    kept, _, _, _ = round_trip(step, old, _decoder(use_layerscale=True, norm_add_unit_offset=False))
    assert all(torch.equal(kept[n], old[n]) for n in names)
