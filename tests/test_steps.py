"""One before/after test per migration step (`pytest -k step`), measured against the real releases.

For every x-transformers step, the fixture corpus holds checkpoints written by a real release on each side
of it (the newest release of the step's old layout and the oldest of its new one). The step alone, run
through `xtf_core.testing.round_trip`, must turn the old release's state dict into exactly the
tensor names and shapes the new release wrote for the same config, and back again: bit-identical where
it only moves tensors, within float rounding where it rescales them.

That the migrated values compute the release's function is checked end to end by the corpus tests
(`test_legacy_conversion.py`); each value-changing step also has a hand-made pair below.
"""

from __future__ import annotations

import pytest
import torch
from legacy_fixtures import all_fixtures
from packaging.version import Version

from xtf_core.chain import default_chain
from xtf_core.chain.step import Step
from xtf_core.checkpoint.stamp import Stamp
from xtf_core.testing import round_trip

CHAIN = default_chain()
FIXTURES = [f for f in all_fixtures() if f.refused is None]
PER_STEP = 3  # configs checked per step: enough to cover its families, cheap to run

# Where xtf's layout after a step differs from the release's on purpose, so the old function survives:
# step -> {tensor name suffix: why}. A tensor listed here may be present (kept) or shaped (pinned) unlike
# the release's; every other tensor must match the release exactly.
KEPT_FOR_THE_OLD_FUNCTION = {
    "x-transformers==0.7.0": {
        "to_logits.weight": "a config that left tie_embedding to the old default stays tied (pinned)",
        "to_logits.bias": "a config that left tie_embedding to the old default stays tied (pinned)",
    },
    "x-transformers==0.26.0": {"to_out.bias": "the attention output bias is kept (xtf_attn_out_bias)"},
    "x-transformers==1.27.0": {
        "to_logits.bias": "the logits bias is kept (xtf_logits_bias)",
        "project_in.bias": "the CTW input projection bias is kept (xtf_project_bias)",
        "project_out.bias": "the CTW output projection bias is kept (xtf_project_bias)",
    },
    "x-transformers==1.42.18": {
        "rotary_pos_emb.inv_freq": "the rotary dimension floored at 32 is pinned (rotary_emb_dim)",
        "rotary_pos_emb.scale": "the xPos scale follows the pinned rotary dimension",
    },
    "x-transformers==2.26.0": {"to_v_gate.bias": "the value-gate bias is kept (xtf_gate_values_bias)"},
}
# stack options a step going down spells out at their default value (the same model as leaving them out)
SPELLED_OUT_DEFAULTS = {"attn_qk_norm_scale": 10}
# steps whose way down writes an equivalent spec, not the same one (the layout check above still holds)
SPEC_EQUIVALENT = {
    "x-transformers==1.42.18": "rotary_emb_dim below 32 means 32 to those releases",
    "x-transformers==0.7.0": "tie_embedding=True spelled out or left to the default: the same model there",
}
# step -> tensor name prefix whose values the round trip cannot restore (unused by the old function)
VALUE_NOT_KEPT = {
    "x-transformers==1.35.2": "encoder.to_logits.",
    "x-transformers==0.21.1": "attn_layers.layers.3.0.",  # the unused norm of the last block (depth-2 post-norm)
}


def _node(release: str):
    return CHAIN.node_for(Stamp("x-transformers", release))


def _corpus_pairs(step: Step) -> list[tuple[object, object]]:
    """(fixture of the newest release before the step, fixture of the oldest release after), per config."""
    if step.down_revision.lineage != "x-transformers" or step.revision.lineage != "x-transformers":
        return []
    releases = sorted({f.release for f in FIXTURES}, key=Version)
    before = [r for r in releases if _node(r) == step.down_revision]
    after = [r for r in releases if _node(r) == step.revision]
    if not before or not after:
        return []
    old = {f.name: f for f in FIXTURES if f.release == before[-1]}
    new = {f.name: f for f in FIXTURES if f.release == after[0]}
    names = sorted(n for n in set(old) & set(new) if old[n].config == new[n].config)
    # prefer configs the step touches: those whose layout changes across it
    names.sort(key=lambda n: _layout(_state(old[n])) == _layout(_state(new[n])))
    return [(old[n], new[n]) for n in names[:PER_STEP]]


def _state(fixture) -> dict[str, torch.Tensor]:
    return dict(torch.load(fixture.pt, weights_only=True, map_location="cpu"))


def _without_spelled_defaults(spec: dict) -> dict:
    layers = {k: v for k, v in spec.get("attn_layers", {}).items() if SPELLED_OUT_DEFAULTS.get(k) != v}
    return {**spec, "attn_layers": layers} if "attn_layers" in spec else spec


def _layout(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in state.items()}


CASES = [
    pytest.param(step, old, new, id=f"{step.id}:{old.name}")
    for step in CHAIN.steps
    for old, new in _corpus_pairs(step)
]


def test_every_layout_step_has_a_corpus_pair() -> None:
    """A step between two x-transformers layouts without real checkpoints on both sides is untested."""
    stepped = {case.values[0].id for case in CASES}
    missing = [
        s.id
        for s in CHAIN.steps
        if s.down_revision.lineage == "x-transformers"
        and s.revision.lineage == "x-transformers"
        and s.id not in stepped
    ]
    assert not missing, f"steps without a before/after pair in the fixture corpus: {missing}"


@pytest.mark.parametrize(("step", "old", "new"), CASES)
def test_step_turns_the_old_release_layout_into_the_new_and_back(step: Step, old, new) -> None:
    before = _state(old)
    upgraded, new_spec, restored, restored_spec = round_trip(step, before, old.config)
    kept = KEPT_FOR_THE_OLD_FUNCTION.get(step.id, {})

    def released(name: str) -> bool:
        return not any(name.endswith(suffix) for suffix in kept)

    ours = {k: v for k, v in _layout(upgraded).items() if released(k)}
    theirs = {k: v for k, v in _layout(_state(new)).items() if released(k)}
    assert ours == theirs, f"{step.id} does not produce {new.release}'s layout"
    if step.id not in SPEC_EQUIVALENT:
        assert _without_spelled_defaults(restored_spec) == _without_spelled_defaults(old.config)
    assert _layout(restored) == _layout(before)
    for name, tensor in before.items():
        if torch.equal(restored[name], tensor):
            continue
        if step.id in VALUE_NOT_KEPT and name.startswith(VALUE_NOT_KEPT[step.id]):
            continue
        # only a rescale (a value transform with a backward) may round the last bits
        torch.testing.assert_close(restored[name], tensor, rtol=1e-6, atol=1e-7, msg=name)


def _scalenorm_spec(dim: int) -> dict:
    return {
        "class": "TransformerWrapper",
        "num_tokens": 8,
        "max_seq_len": 4,
        "attn_layers": {"class": "Decoder", "dim": dim, "depth": 1, "heads": 1, "use_scalenorm": True},
    }


def _step(revision: str) -> Step:
    return next(s for s in CHAIN.steps if s.id == revision)


BLOCK_GAINS = ["attn_layers.layers.0.0.0.g", "attn_layers.layers.1.0.0.g"]


@pytest.mark.parametrize(
    ("revision", "names", "factor"),
    [
        # before 1.15.0 the final norm is the wrapper's LayerNorm: only the block gains are ScaleNorm's
        ("x-transformers==0.33.1", BLOCK_GAINS, 4.0),
        ("x-transformers==1.27.20", [*BLOCK_GAINS, "attn_layers.final_norm.g"], 0.25),
    ],
)
def test_step_scalenorm_gain_pair(revision: str, names: list[str], factor: float) -> None:
    """ScaleNorm reparametrisations: the stored gain is multiplied (0.33.1) or divided (1.27.20) by sqrt(dim)."""
    spec = _scalenorm_spec(16)  # sqrt(16) = 4
    old = {name: torch.tensor([0.5 + i]) for i, name in enumerate(names)}
    new, _, back, _ = round_trip(_step(revision), old, spec)
    for name in names:
        assert new[name].item() == pytest.approx(old[name].item() * factor)
        assert torch.equal(back[name], old[name])


def test_step_chain_round_trip_helper_runs_any_installed_step() -> None:
    """The helper docs/migrations.md gives step authors works for the steps of the installed package."""
    step = _step("x-transformers==1.18.0")
    spec = {
        "class": "TransformerWrapper",
        "num_tokens": 8,
        "max_seq_len": 4,
        "attn_layers": {"class": "Decoder", "dim": 4, "depth": 1, "heads": 1},
    }
    old = {"attn_layers.layers.1.1.ff.3.weight": torch.arange(16.0).reshape(4, 4)}
    new, new_spec, back, back_spec = round_trip(step, old, spec)
    assert list(new) == ["attn_layers.layers.1.1.ff.2.weight"]
    assert torch.equal(new["attn_layers.layers.1.1.ff.2.weight"], old["attn_layers.layers.1.1.ff.3.weight"])
    assert back_spec == spec and list(back) == list(old)
