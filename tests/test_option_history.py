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
from option_families import FAMILIES, TOLERANCE, build_in_release, convert_and_run, export_and_check

from xtf_converters import option_history
from xtf_core.errors import ConversionError

extended = pytest.mark.skipif(
    os.environ.get("XTF_RELEASE_TESTS") != "1", reason="set XTF_RELEASE_TESTS=1 (installs releases)"
)

SPECS = {name: (spec, flags) for configs in FAMILIES.values() for name, spec, flags in configs}

# release -> configs that convert and export back exactly (one release per era of the options they use)
BOTH_WAYS = {
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
    ],
    # 0.20.8: macaron runs again; token shift, residual scaling and gating, head scale, local attention
    "0.20.8": [
        "dec_macaron",
        "dec_shift",
        "dec_scale_res",
        "dec_gate_res",
        "dec_head_scale",
        "dec_attend_past",
    ],
    # 1.0.4 (0.33.1-1.14 era): the renamed feed-forward under macaron and shift wrappers, one kv head, l2norm embed
    "1.0.4": [
        "dec_macaron_cross",
        "dec_shift",
        "dec_scale_res_const",
        "dec_one_kv",
        "dec_l2norm_embed",
        "dec_shift_mem_down",
        "enc_mem_kv",
    ],
    # 1.27.1: after the bias-less LayerNorm; the feed-forward's post-activation norm converts from here
    "1.27.1": [
        "dec_macaron",
        "enc_shift",
        "dec_post_act_ln",
        "dec_talking_old",
        "dec_dyn_pos",
        "dec_mem_interspersed",
    ],
}

# more releases, run with XTF_RELEASE_TESTS=1
EXTENDED = {
    "0.3.5": ["dec_mem_kv", "dec_macaron", "dec_macaron_cross", "dec_on_attn", "dec_sparse_topk"],
    "0.33.1": [
        "dec_scale_res",
        "dec_on_attn",
        "cross_on_attn",
        "dec_gate_res",
        "dec_head_scale",
        "dec_one_kv",
    ],
    "1.26.0": ["dec_macaron", "enc_macaron_post", "dec_shift", "enc_shift", "dec_mem_kv", "enc_mem_kv"],
    "1.44.8": ["dec_macaron", "dec_shift", "dec_post_act_ln", "dec_mem_kv", "dec_talking", "dec_layerscale"],
}

# (release, config, words the refusal must contain)
REFUSED = [
    ("0.20.2", "dec_post_act_ln", "ff_post_act_ln"),
]


def _both_ways(tmp_path: Path, release: str, names: list[str]) -> None:
    configs = [(name, *SPECS[name]) for name in names]
    built = build_in_release(release, configs, tmp_path)
    failed = {name: result["error"] for name, result in built.items() if not result["ok"]}
    assert not failed, f"x-transformers {release} did not run: {failed}"
    exports, diffs = {}, {}
    for name, spec, _ in configs:
        diffs[name], exports[name] = convert_and_run(release, name, spec, tmp_path)
    assert all(d <= TOLERANCE for d in diffs.values()), f"converted outputs differ: {diffs}"
    checked = export_and_check(release, exports, tmp_path)
    bad = {k: v for k, v in checked.items() if not isinstance(v, float) or v > TOLERANCE}
    assert set(checked) == set(exports) and not bad, f"x-transformers {release} on the export: {bad}"


@pytest.mark.parametrize("release", sorted(BOTH_WAYS), ids=str)
def test_old_checkpoints_with_the_option_convert_and_export_back(tmp_path: Path, release: str) -> None:
    _both_ways(tmp_path, release, BOTH_WAYS[release])


@extended
@pytest.mark.parametrize("release", sorted(EXTENDED), ids=str)
def test_more_releases_per_family(tmp_path: Path, release: str) -> None:
    _both_ways(tmp_path, release, EXTENDED[release])


@pytest.mark.parametrize(("release", "name", "words"), REFUSED, ids=[f"{r}-{n}" for r, n, _ in REFUSED])
def test_option_ranges_a_release_ran_differently_are_refused(
    tmp_path: Path, release: str, name: str, words: str
) -> None:
    spec, flags = SPECS[name]
    built = build_in_release(release, [(name, spec, flags)], tmp_path)
    assert built[name]["ok"], built[name]
    with pytest.raises(ConversionError, match=words):
        convert_and_run(release, name, spec, tmp_path)


def test_refused_ranges_name_the_option_and_the_reason() -> None:
    """The table alone (no release needed): inside a range the option is refused, outside it passes."""
    for entry in option_history.REFUSED:
        spec = {"class": "TransformerWrapper", "attn_layers": {"class": "Decoder", entry.option: True}}
        with pytest.raises(ConversionError, match=entry.option):
            option_history.check(spec, entry.last, "x.pt")
        option_history.check({"class": "Decoder", entry.option: False}, entry.last, "x.pt")
