"""One refusal contract: whatever the core does not support raises `UnsupportedOptionError` naming it (and the
nearest supported name, where one is close), never `SpecError`, `TypeError` or silence."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch import nn

import xtf_core
from xtf_core.errors import UnsupportedOptionError
from xtf_core.model.wrappers import _NEUTRAL_FORWARD

x_transformers = pytest.importorskip("x_transformers")


def _dec(**kw: Any) -> Any:
    return xtf_core.Decoder(dim=16, depth=1, heads=2, attn_dim_head=8, **kw)


def _tw(**kw: Any) -> Any:
    return xtf_core.TransformerWrapper(num_tokens=20, max_seq_len=8, attn_layers=_dec(), **kw)


def _ctw(**kw: Any) -> Any:
    return xtf_core.ContinuousTransformerWrapper(max_seq_len=8, attn_layers=_dec(), **kw)


def _refused(option: str, build: Any) -> UnsupportedOptionError:
    with pytest.raises(UnsupportedOptionError, match=rf"'{option}'") as info:
        build()
    return info.value


MODULE_VALUED = {
    "token_emb": lambda: _tw(token_emb=nn.Embedding(20, 16)),
    "to_logits": lambda: _tw(to_logits=nn.Linear(16, 20)),
    "project_in": lambda: _ctw(project_in=nn.Linear(4, 16)),
    "project_out": lambda: _ctw(project_out=nn.Linear(16, 4)),
    "ff_custom_activation": lambda: _dec(ff_custom_activation=nn.SiLU()),
    "attn_hybrid_module": lambda: _dec(attn_hybrid_module=nn.GRU(16, 16, batch_first=True)),
    "attn_custom_attn_fn": lambda: _dec(attn_custom_attn_fn=lambda q, k: q @ k.transpose(-1, -2)),
    "token_critic": lambda: xtf_core.NonAutoregressiveWrapper(_tw(), mask_id=0, token_critic=_tw()),
    "loss_fn": lambda: xtf_core.ContinuousAutoregressiveWrapper(
        _ctw(dim_in=4, dim_out=4), loss_fn=nn.L1Loss()
    ),
    "ttt_custom_loss_module": lambda: xtf_core.XLAutoregressiveWrapper(
        _tw(), ttt_custom_loss_module=nn.Identity()
    ),
}


@pytest.mark.parametrize("option", sorted(MODULE_VALUED))
def test_module_valued_options_are_unsupported_option_errors(option: str) -> None:
    error = _refused(option, MODULE_VALUED[option])
    assert type(error) is UnsupportedOptionError


REFUSED_OPTIONS = {
    "recycling": lambda: _tw(recycling=True),
    "looped": lambda: _tw(looped=True),
    "ff_deep_embed": lambda: _tw(ff_deep_embed=True),
    "episodic_mem_len": lambda: xtf_core.XLAutoregressiveWrapper(_tw(), episodic_mem_len=4),
    "ttt_module_paths": lambda: xtf_core.XLAutoregressiveWrapper(_tw(), ttt_module_paths=["attn_layers"]),
    "slopes": lambda: xtf_core.AlibiPositionalBias(2, slopes=[0.5, 0.25]),
    "squeeze_output": lambda: xtf_core.AttentionPool(16, squeeze_output=True),
}


@pytest.mark.parametrize("option", sorted(REFUSED_OPTIONS))
def test_unsupported_options_are_named(option: str) -> None:
    _refused(option, REFUSED_OPTIONS[option])


@pytest.mark.parametrize(
    ("typo", "nearest", "build"),
    [
        (
            "num_tokenz",
            "num_tokens",
            lambda: xtf_core.TransformerWrapper(
                num_tokenz=20, num_tokens=20, max_seq_len=8, attn_layers=_dec()
            ),
        ),
        ("probabilistc", "probabilistic", lambda: _ctw(probabilistc=True)),
        ("mask_prb", "mask_prob", lambda: xtf_core.AutoregressiveWrapper(_tw(), mask_prb=0.1)),
        (
            "patch_sze",
            "patch_size",
            lambda: xtf_core.ViTransformerWrapper(
                image_size=8, patch_size=4, patch_sze=4, attn_layers=xtf_core.Encoder(dim=16, depth=1)
            ),
        ),
    ],
)
def test_typos_name_the_nearest_supported_option(typo: str, nearest: str, build: Any) -> None:
    error = _refused(typo, build)
    assert f"'{nearest}'" in str(error)


def test_training_wrapper_options_are_accepted() -> None:
    """AutoregressiveWrapper's training options (TypeError in xtf 0.1.0) build, and are kept in the spec."""
    wrapper = xtf_core.AutoregressiveWrapper(
        _tw(),
        mask_prob=0.1,
        add_attn_z_loss=True,
        next_embed_loss_weight=0.5,
        looped_loss_threshold_exit=0.1,
        looped_loss_slope=20,
        looped_exit_loss_weight=2.0,
    )
    spec = xtf_core.spec_of(wrapper)
    assert spec["mask_prob"] == 0.1 and spec["looped_exit_loss_weight"] == 2.0


# ---------------------------------------------------------------------------------------------- forward keywords


def _real_forward_keywords(cls: type) -> set[str]:
    params = inspect.signature(cls.forward).parameters
    return {n for n, p in params.items() if n not in ("self", "x") and p.kind is not p.VAR_KEYWORD}


def test_every_transformer_wrapper_forward_keyword_is_implemented_or_refused() -> None:
    ours = set(inspect.signature(xtf_core.TransformerWrapper.forward).parameters) | set(_NEUTRAL_FORWARD)
    assert _real_forward_keywords(x_transformers.TransformerWrapper) <= ours


@pytest.mark.parametrize(("keyword", "value"), [(k, object()) for k in sorted(_NEUTRAL_FORWARD)])
def test_unimplemented_forward_keywords_are_refused(keyword: str, value: Any) -> None:
    model = _tw()
    if keyword == "looped_pred_all_logits":
        model(torch.zeros(1, 3, dtype=torch.long), looped_pred_all_logits=True)  # inert without looped
        return
    with pytest.raises(UnsupportedOptionError, match=rf"'{keyword}'"):
        model(torch.zeros(1, 3, dtype=torch.long), **{keyword: value})


@pytest.mark.parametrize("keyword", ["causal", "context_pos", "not_a_keyword", "condition"])
def test_unknown_forward_keywords_are_refused(keyword: str) -> None:
    x = torch.zeros(1, 3, dtype=torch.long)
    accepted = set(inspect.signature(_dec().forward).parameters)
    if keyword in accepted:
        pytest.skip(f"{keyword} is implemented by the stack now")
    with pytest.raises(UnsupportedOptionError, match=rf"'{keyword}'"):
        _tw()(x, **{keyword: True})
    with pytest.raises(UnsupportedOptionError, match=rf"'{keyword}'"):
        _ctw()(torch.zeros(1, 3, 16), **{keyword: True})
    with pytest.raises(UnsupportedOptionError, match=rf"'{keyword}'"):
        xtf_core.AutoregressiveWrapper(_tw())(torch.zeros(1, 4, dtype=torch.long), **{keyword: True})


def test_generate_refuses_contrastive_decoding() -> None:
    wrapper = xtf_core.AutoregressiveWrapper(_tw())
    with pytest.raises(UnsupportedOptionError, match="'amateur_model'"):
        wrapper.generate(torch.zeros(1, 2, dtype=torch.long), 2, amateur_model=_tw())


def test_a_forward_keyword_typo_names_the_nearest() -> None:
    with pytest.raises(UnsupportedOptionError, match="did you mean 'return_embeddings'"):
        _tw()(torch.zeros(1, 3, dtype=torch.long), return_embedding=True)


def test_unimplemented_methods_are_refused_by_name() -> None:
    with pytest.raises(UnsupportedOptionError, match="attn_qk_clip_"):
        _tw().attn_qk_clip_(None)
    with pytest.raises(UnsupportedOptionError, match="muon_parameters"):
        _tw().muon_parameters()
    with pytest.raises(UnsupportedOptionError, match="qk_clip_"):
        xtf_core.Attention(16, heads=2, dim_head=8).qk_clip_(None)
