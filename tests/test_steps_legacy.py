"""Before/after pairs for the x-transformers steps below 0.28.4 (one test per step, plus round trips).

Expected values are written out from the upstream change each step names, never taken from the step.
The whole chain is checked against the real releases by the fixture corpus (tests/test_legacy_conversion.py).
"""

from __future__ import annotations

import math

import pytest
import torch

import xtf_migrations.xt_0_0_29_block_list as block_list
import xtf_migrations.xt_0_4_0_block_lists as block_lists
import xtf_migrations.xt_0_5_0_split_kv as split_kv
import xtf_migrations.xt_0_6_4_geglu as geglu
import xtf_migrations.xt_0_7_0_tied_default as tied_default
import xtf_migrations.xt_0_7_4_prenorm_residual as prenorm_residual
import xtf_migrations.xt_0_9_0_scalenorm as scalenorm_scale
import xtf_migrations.xt_0_11_2_rotary_halves as rotary_halves
import xtf_migrations.xt_0_11_4_rotary_dim as rotary_dim
import xtf_migrations.xt_0_11_9_relpos_scale as relpos_scale
import xtf_migrations.xt_0_15_0_rotary_values as rotary_values
import xtf_migrations.xt_0_17_11_pos_emb_scale as pos_emb_scale
import xtf_migrations.xt_0_20_2_ff_out_index as ff_out_index
import xtf_migrations.xt_0_21_1_block_norms as block_norms
import xtf_migrations.xt_0_24_0_token_emb as token_emb
import xtf_migrations.xt_0_24_1_pos_emb_scale as pos_emb_fixed
import xtf_migrations.xt_0_26_0_attn_out_bias as attn_out_bias
import xtf_migrations.xt_1_20_0_rotary_values as rotary_values_off
import xtf_migrations.xt_1_42_18_rotary_dim as rotary_dim_floor
from xtf_core.chain import Chain, Step, migrate_in_memory
from xtf_core.errors import MigrationError
from xtf_core.testing import round_trip


def _spec(**layers) -> dict:
    base = {"class": "Decoder", "dim": 8, "depth": 1, "heads": 2, "attn_dim_head": 4}
    return {
        "class": "TransformerWrapper",
        "num_tokens": 16,
        "max_seq_len": 8,
        "attn_layers": {**base, **layers},
    }


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


# --- rotary -------------------------------------------------------------------------------------------


def _rotate_pairs_old(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x-transformers <= 0.11.1: rotate (2i, 2i+1) pairs by frequency i."""
    x1, x2 = t[..., 0::2], t[..., 1::2]
    cos, sin = freqs.cos(), freqs.sin()
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)


def _rotate_halves_new(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x-transformers 0.11.2: rotate (i, i + d/2) pairs by frequency i."""
    half = t.shape[-1] // 2
    x1, x2 = t[..., :half], t[..., half:]
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def test_rotary_pairs_to_halves_keeps_the_attention_scores():
    spec = _spec(rotary_pos_emb=True, attn_dim_head=32, depth=1)
    torch.manual_seed(0)
    old = {f"attn_layers.layers.0.1.to_{n}.weight": torch.randn(64, 8) for n in "qkv"}
    new, new_spec, back, back_spec = round_trip(Step.from_module(rotary_halves), old, spec)
    assert torch.equal(new["attn_layers.layers.0.1.to_v.weight"], old["attn_layers.layers.0.1.to_v.weight"])
    assert _same(back, old) and back_spec == spec

    x = torch.randn(5, 8)
    freqs = torch.arange(5.0)[:, None] / (10000 ** (torch.arange(0, 32, 2).float() / 32))

    def scores(sd: dict, rotate) -> torch.Tensor:
        q = (x @ sd["attn_layers.layers.0.1.to_q.weight"].t()).view(5, 2, 32).transpose(0, 1)
        k = (x @ sd["attn_layers.layers.0.1.to_k.weight"].t()).view(5, 2, 32).transpose(0, 1)
        return rotate(q, freqs) @ rotate(k, freqs).transpose(-1, -2)

    assert torch.allclose(scores(old, _rotate_pairs_old), scores(new, _rotate_halves_new), atol=1e-4)


def test_rotary_dim_is_pinned_to_the_whole_head():
    spec = _spec(rotary_pos_emb=True, attn_dim_head=64)
    new, new_spec, back, back_spec = round_trip(Step.from_module(rotary_dim), {}, spec)
    assert new_spec["attn_layers"]["rotary_emb_dim"] == 64 and back_spec == spec
    # a head narrower than 32 rotates whole: below the floor of 0.11.4-1.42.17, so the spec says so
    narrow = _spec(rotary_pos_emb=True, attn_dim_head=16)
    _, pinned, _, back = round_trip(Step.from_module(rotary_dim), {}, narrow)
    assert pinned["attn_layers"]["rotary_emb_dim"] == 16 and pinned["attn_layers"]["xtf_rotary_dim_unfloored"]
    assert back == narrow
    _, at_1_42_18, _, _ = round_trip(Step.from_module(rotary_dim_floor), {}, pinned)
    assert at_1_42_18["attn_layers"]["rotary_emb_dim"] == 16
    assert "xtf_rotary_dim_unfloored" not in at_1_42_18["attn_layers"]


def test_values_rotated_from_0_15_0_and_no_longer_from_1_20_0():
    spec = _spec(rotary_pos_emb=True, attn_dim_head=32)
    _, at_0_15, _, back = round_trip(Step.from_module(rotary_values), {}, spec)
    assert at_0_15["attn_layers"]["xtf_rotary_plain_values"] is True and back == spec
    # the 1.20.0 step takes the marker: the model keeps plain values (no xtf_rotary_values)
    _, at_1_20, _, back_1_20 = round_trip(Step.from_module(rotary_values_off), {}, at_0_15)
    assert "xtf_rotary_values" not in at_1_20["attn_layers"] and back_1_20 == at_0_15
    # a file from 0.15.0-1.19.1 rotates its values
    _, rotated, _, _ = round_trip(Step.from_module(rotary_values_off), {}, spec)
    assert rotated["attn_layers"]["xtf_rotary_values"] is True
    with pytest.raises(MigrationError, match="before 0.15.0"):
        Step.from_module(rotary_values).apply_downgrade_spec(rotated)


# --- positions ----------------------------------------------------------------------------------------


def test_relative_position_table_is_divided_by_sqrt_dim_head():
    spec = _spec(rel_pos_bias=True, attn_dim_head=16)
    old = {"attn_layers.rel_pos.relative_attention_bias.weight": torch.randn(32, 2)}
    new, _, back, _ = round_trip(Step.from_module(relpos_scale), old, spec)
    # 0.11.9 adds bias * sqrt(16) where 0.11.8 added the bias itself
    assert torch.allclose(
        new["attn_layers.rel_pos.relative_attention_bias.weight"] * 4.0, old[next(iter(old))]
    )
    assert _close(back, old)


@pytest.mark.parametrize("module", [pos_emb_scale, pos_emb_fixed])
def test_position_table_absorbs_the_new_scale(module):
    spec = _spec()
    old = {"pos_emb.emb.weight": torch.randn(8, 8), "token_emb.emb.weight": torch.randn(16, 8)}
    new, _, back, _ = round_trip(Step.from_module(module), old, spec)
    # after the step the release multiplies the table by 8 ** -0.5: the product stays what it was
    assert torch.allclose(new["pos_emb.emb.weight"] * 8**-0.5, old["pos_emb.emb.weight"], atol=1e-6)
    assert torch.equal(new["token_emb.emb.weight"], old["token_emb.emb.weight"])
    assert _close(back, old)
    rotary = {"token_emb.emb.weight": torch.randn(16, 8)}  # no absolute positions: nothing to rescale
    assert _same(round_trip(Step.from_module(module), rotary, _spec(rotary_pos_emb=True))[0], rotary)


def test_token_embedding_rename_and_the_unscaled_0_24_0_positions():
    spec = _spec()
    old = {"token_emb.weight": torch.randn(16, 8), "pos_emb.emb.weight": torch.randn(8, 8)}
    new, _, back, _ = round_trip(Step.from_module(token_emb), old, spec)
    assert torch.equal(new["token_emb.emb.weight"], old["token_emb.weight"])
    assert torch.allclose(new["pos_emb.emb.weight"] * math.sqrt(8), old["pos_emb.emb.weight"], atol=1e-6)
    assert _close(back, old)


# --- layout -------------------------------------------------------------------------------------------


def test_feed_forward_output_moves_to_net_3():
    old = {
        "attn_layers.layers.1.1.net.0.0.weight": torch.randn(16, 8),
        "attn_layers.layers.1.1.net.2.weight": torch.randn(8, 16),
        "attn_layers.layers.1.1.net.2.bias": torch.randn(8),
    }
    new, _, back, _ = round_trip(Step.from_module(ff_out_index), old, _spec())
    assert set(new) == {
        "attn_layers.layers.1.1.net.0.0.weight",
        "attn_layers.layers.1.1.net.3.weight",
        "attn_layers.layers.1.1.net.3.bias",
    }
    assert torch.equal(new["attn_layers.layers.1.1.net.3.weight"], old["attn_layers.layers.1.1.net.2.weight"])
    assert _same(back, old)


def test_block_norms_pre_norm_sandwich_and_post_norm():
    pre = {
        f"attn_layers.layers.{i}.0.{leaf}": torch.randn(8) for i in range(2) for leaf in ("weight", "bias")
    }
    new, _, back, _ = round_trip(Step.from_module(block_norms), pre, _spec())
    assert set(new) == {f"attn_layers.layers.{i}.0.0.{leaf}" for i in range(2) for leaf in ("weight", "bias")}
    assert _same(back, pre)

    sandwich = {f"attn_layers.layers.{i}.0.{s}.weight": torch.randn(8) for i in range(2) for s in (0, 1)}
    assert _same(round_trip(Step.from_module(block_norms), sandwich, _spec(sandwich_norm=True))[0], sandwich)

    post = {f"attn_layers.layers.{i}.0.g": torch.rand(1) for i in range(2)}  # ScaleNorm, post-norm
    new, _, back, _ = round_trip(
        Step.from_module(block_norms), post, _spec(pre_norm=False, use_scalenorm=True)
    )
    # the last block's norm was never applied (0.4.1-0.20.9) and is gone from 0.21.1
    assert set(new) == {"attn_layers.layers.0.0.2.g"}
    assert torch.equal(new["attn_layers.layers.0.0.2.g"], post["attn_layers.layers.0.0.g"])
    assert set(back) == set(post) and torch.equal(
        back["attn_layers.layers.0.0.g"], post["attn_layers.layers.0.0.g"]
    )


def test_attention_output_bias_is_kept_and_backfilled_as_zero():
    spec = _spec(cross_attend=True)
    old = {f"attn_layers.layers.{i}.1.to_out.bias": torch.randn(8) for i in (0, 1)}
    new, new_spec, back, back_spec = round_trip(Step.from_module(attn_out_bias), old, spec)
    assert _same(new, old) and new_spec["attn_layers"]["xtf_attn_out_bias"] is True
    assert _same(back, old) and back_spec == spec
    # a model trained without the bias goes down to 0.25.x with zero biases (the same function)
    weights = {f"attn_layers.layers.{i}.1.to_out.weight": torch.randn(8, 8) for i in (0, 1)}
    now = {**_spec(cross_attend=True)}
    step = Step.from_module(attn_out_bias)
    chain = Chain([step], installed=step.revision)
    down, down_spec, _ = migrate_in_memory(weights, now, step.revision, step.down_revision, chain=chain)
    assert down_spec == now
    for i in (0, 1):
        assert torch.equal(down[f"attn_layers.layers.{i}.1.to_out.bias"], torch.zeros(8))


# --- below 0.10.0 -------------------------------------------------------------------------------------


def test_prenorm_wrappers_become_norm_block_lists_and_mark_the_plain_residual():
    old = {
        "attn_layers.layers.0.norm.weight": torch.randn(8),
        "attn_layers.layers.0.fn.to_q.weight": torch.randn(8, 8),
        "attn_layers.layers.1.fn.net.0.0.weight": torch.randn(16, 8),
    }
    new, new_spec, back, back_spec = round_trip(Step.from_module(block_lists), old, _spec())
    assert set(new) == {
        "attn_layers.layers.0.0.weight",
        "attn_layers.layers.0.1.to_q.weight",
        "attn_layers.layers.1.1.net.0.0.weight",
    }
    assert new_spec["attn_layers"]["xtf_plain_residual"] is True
    assert _same(back, old) and back_spec == _spec()
    with pytest.raises(MigrationError, match="before 0.4.0"):
        Step.from_module(block_lists).apply_downgrade_spec(_spec(pre_norm=False))


def test_normed_residual_only_for_0_4_0_to_0_7_3_pre_norm_files():
    step = Step.from_module(prenorm_residual)
    assert step.apply_upgrade_spec(_spec())["attn_layers"]["xtf_normed_residual"] is True
    plain = step.apply_upgrade_spec(_spec(xtf_plain_residual=True))["attn_layers"]
    assert "xtf_normed_residual" not in plain and "xtf_plain_residual" not in plain
    assert "xtf_normed_residual" not in step.apply_upgrade_spec(_spec(pre_norm=False))["attn_layers"]
    assert step.apply_downgrade_spec(_spec())["attn_layers"]["xtf_plain_residual"] is True


def test_normed_residual_option_adds_the_branch_to_the_normed_input():
    from xtf_core.model.layers import Decoder

    torch.manual_seed(0)
    plain = Decoder(dim=8, depth=1, heads=2, attn_dim_head=4).eval()
    buggy = Decoder(dim=8, depth=1, heads=2, attn_dim_head=4, xtf_normed_residual=True).eval()
    buggy.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        # written out: x = norm(x); x = x + f(x), per block, then the final norm (x-transformers 0.7.3)
        h = x
        for layer in plain.layers:
            norms, block = layer[0], layer[1]
            h = norms[0](h)
            out = block(h)
            h = h + (out[0] if isinstance(out, tuple) else out)
        expected = plain.final_norm(h)
        assert torch.allclose(buggy(x), expected, atol=1e-5)
        assert not torch.allclose(plain(x), expected, atol=1e-3)


def test_to_kv_splits_and_position_table_renames():
    spec = _spec(cross_attend=True)
    kv = torch.randn(16, 8)
    old = {
        "attn_layers.layers.0.1.to_kv.weight": kv,
        "attn_layers.layers.1.1.to_kv.weight": torch.randn(16, 8),
        "pos_emb.weight": torch.randn(8, 8),
        "token_emb.weight": torch.randn(16, 8),
    }
    new, _, back, _ = round_trip(Step.from_module(split_kv), old, spec)
    assert torch.equal(new["attn_layers.layers.0.1.to_k.weight"], kv[:8])
    assert torch.equal(new["attn_layers.layers.0.1.to_v.weight"], kv[8:])
    assert torch.equal(new["pos_emb.emb.weight"], old["pos_emb.weight"])
    assert _same(back, old)
    # 0.4.x relative-bias models kept absolute positions too
    assert (
        Step.from_module(split_kv).apply_upgrade_spec(_spec(rel_pos_bias=True))["attn_layers"][
            "disable_abs_pos_emb"
        ]
        is False
    )


def test_old_geglu_is_refused_both_ways():
    with pytest.raises(MigrationError, match="gelu"):
        Step.from_module(geglu).apply_upgrade_spec(_spec(ff_glu=True))
    with pytest.raises(MigrationError, match="gelu"):
        Step.from_module(geglu).apply_downgrade_spec(_spec(ff_glu=True))
    assert Step.from_module(geglu).apply_upgrade_spec(_spec()) == _spec()


def test_tied_embedding_was_the_default_before_0_7_0():
    step = Step.from_module(tied_default)
    assert step.apply_upgrade_spec(_spec())["tie_embedding"] is True
    assert step.apply_upgrade_spec({**_spec(), "tie_embedding": False})["tie_embedding"] is False
    assert "tie_embedding" not in step.apply_downgrade_spec({**_spec(), "tie_embedding": True})
    assert step.apply_downgrade_spec(_spec())["tie_embedding"] is False


def test_scalenorm_gain_divided_by_sqrt_dim():
    spec = _spec(use_scalenorm=True)
    old = {"attn_layers.layers.0.0.g": torch.tensor([2.0]), "norm.weight": torch.ones(8)}
    new, _, back, _ = round_trip(Step.from_module(scalenorm_scale), old, spec)
    # 0.9.0 divides by |x| / sqrt(8): the same output needs g / sqrt(8)
    assert torch.allclose(new["attn_layers.layers.0.0.g"], torch.tensor([2.0 / math.sqrt(8)]))
    assert torch.equal(new["norm.weight"], old["norm.weight"]) and _close(back, old)


@pytest.mark.parametrize(
    ("layers", "old_slots"),
    [
        ({"class": "Encoder"}, (0, 1)),  # (attention, feed-forward) per depth
        ({"class": "Decoder"}, (0, 2)),  # (self-attention, None, feed-forward) per depth
        ({"class": "Decoder", "cross_attend": True}, (0, 1, 2)),
    ],
)
def test_per_depth_lists_become_one_block_list(layers, old_slots):
    spec = _spec(**layers, depth=2)
    old = {}
    for depth in range(2):
        for slot in old_slots:
            old[f"attn_layers.layers.{depth}.{slot}.norm.weight"] = torch.randn(8)
            old[f"attn_layers.layers.{depth}.{slot}.fn.to_q.weight"] = torch.randn(8, 8)
    new, _, back, _ = round_trip(Step.from_module(block_list), old, spec)
    width = len(old_slots)
    for depth in range(2):
        for offset, slot in enumerate(old_slots):
            block = depth * width + offset  # flat order: depth-major, block types in order
            for leaf in ("norm.weight", "fn.to_q.weight"):
                assert torch.equal(
                    new[f"attn_layers.layers.{block}.{leaf}"],
                    old[f"attn_layers.layers.{depth}.{slot}.{leaf}"],
                )
    assert len(new) == len(old) and _same(back, old)
