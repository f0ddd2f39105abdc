"""Shared helpers and hypothesis strategies for comparing the xtf core with x-transformers 2.31.10.

A *spec* (the JSON form `xtf_core.build` takes) is the single source of truth for a test model: xtf
builds it with `xtf_core.build`, the reference with `build_reference`, which resolves the same class
names to x-transformers classes. `paired(spec)` builds both, checks that their state dicts have the
same names and shapes, perturbs the reference's tensors with seeded noise (so norm gains are not 1
and biases are not 0), copies them into xtf with `strict=True` and puts both in eval mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, Phase, assume, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import xtf_core

x_transformers = pytest.importorskip("x_transformers")
xt_module = pytest.importorskip("x_transformers.x_transformers")

with contextlib.suppress(ImportError):  # the reference logs a warning for every small rotary dim
    from loguru import logger

    logger.disable("x_transformers")

ATOL = 1e-5

REFERENCE_CLASSES: dict[str, type[nn.Module]] = {
    "TransformerWrapper": x_transformers.TransformerWrapper,
    "ContinuousTransformerWrapper": x_transformers.ContinuousTransformerWrapper,
    "XTransformer": x_transformers.XTransformer,
    "Encoder": x_transformers.Encoder,
    "Decoder": x_transformers.Decoder,
    "CrossAttender": x_transformers.CrossAttender,
    "AttentionLayers": xt_module.AttentionLayers,
    "ViTransformerWrapper": x_transformers.ViTransformerWrapper,
    "AutoregressiveWrapper": x_transformers.AutoregressiveWrapper,
    "XLAutoregressiveWrapper": x_transformers.XLAutoregressiveWrapper,
    "NonAutoregressiveWrapper": x_transformers.NonAutoregressiveWrapper,
    "ContinuousAutoregressiveWrapper": x_transformers.ContinuousAutoregressiveWrapper,
}

# Deterministic for CI: same examples every run, no deadline (first calls pay for lazy imports).
PARITY_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


# Top-two logits closer than this are a tie in float32: another CPU or thread count may round either way.
GREEDY_TIE = 1e-4


def assert_same_greedy(
    logits_at: Any, prompt: torch.Tensor, expected: torch.Tensor, got: torch.Tensor, what: str
) -> None:
    """Greedy continuations agree token for token. Where a row parts, the top two logits there must tie
    (within GREEDY_TIE): rounding decided that step, so the rest of the row is not compared.
    `logits_at(row, tokens)` gives the next-token logits after `tokens` (shape [1, n]) for that row."""
    assert expected.shape == got.shape, f"{what}: shapes {tuple(expected.shape)} vs {tuple(got.shape)}"
    for row in range(expected.shape[0]):
        parted = (expected[row] != got[row]).nonzero()
        if len(parted) == 0:
            continue
        step = int(parted[0])
        context = torch.cat([prompt[row], expected[row, :step]])[None]
        with torch.no_grad():
            top = logits_at(row, context).reshape(-1).topk(2).values
        margin = float(top[0] - top[1])
        assert margin < GREEDY_TIE, (
            f"{what}: row {row} parts at step {step} (margin {margin:.2e}): {expected[row]} vs {got[row]}"
        )


# ---------------------------------------------------------------------------------------------- building


def build_reference(spec: Mapping[str, Any]) -> nn.Module:
    """The x-transformers 2.31.10 model for a spec (same class names, same kwargs)."""
    kwargs = {
        key: (build_reference(value) if isinstance(value, Mapping) and "class" in value else value)
        for key, value in spec.items()
        if key != "class"
    }
    return REFERENCE_CLASSES[spec["class"]](**kwargs)


def perturb_(model: nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Add seeded noise to every floating tensor of the state dict (parameters and persistent buffers)."""
    gen = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    with torch.no_grad():
        for _, tensor in sorted(model.state_dict(keep_vars=True).items()):
            if not tensor.is_floating_point() or id(tensor) in seen:
                continue
            seen.add(id(tensor))  # tied tensors (tie_token_emb) appear under two names
            tensor.add_(torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype) * scale)


def layout(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def paired(spec: Mapping[str, Any], seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(reference, xtf) for one spec, with identical perturbed weights, both in eval mode."""
    torch.manual_seed(seed)
    reference = build_reference(spec)
    ours = xtf_core.build(spec)
    ref_layout, our_layout = layout(reference), layout(ours)
    assert ref_layout == our_layout, (
        f"state dict layouts differ: only in reference {sorted(set(ref_layout) - set(our_layout))}, "
        f"only in xtf {sorted(set(our_layout) - set(ref_layout))}, "
        f"shape mismatches {[k for k in ref_layout if k in our_layout and ref_layout[k] != our_layout[k]]}"
    )
    perturb_(reference, seed=seed + 1)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def paired_or_reject(spec: Mapping[str, Any], seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Like `paired`, but a spec x-transformers itself refuses to build is rejected (hypothesis `assume`)."""
    try:
        torch.manual_seed(seed)
        build_reference(spec)
    except Exception:  # noqa: BLE001 - any refusal by the reference means "not a valid config"
        assume(False)
    return paired(spec, seed)


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two (nested tuples/lists of) tensors with equal structure."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor), f"tensor vs {type(b).__name__}"
        assert a.shape == b.shape, f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
        if a.numel() == 0:
            return 0.0
        if a.dtype == torch.bool or not a.is_floating_point():
            return float((a != b).any())
        return float((a.detach().float() - b.detach().float()).abs().max())
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"structure {len(a)} vs {b!r}"
        return max((max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)
    raise TypeError(f"cannot compare {type(a).__name__}")


def max_abs(a: Any) -> float:
    if isinstance(a, Tensor):
        return float(a.detach().abs().max()) if a.numel() and a.is_floating_point() else 0.0
    return max((max_abs(x) for x in a), default=0.0)


def assert_close(a: Any, b: Any, what: str = "output", atol: float = ATOL) -> None:
    """Equal within `atol`, scaled by the reference's magnitude where that exceeds 1.

    float32 keeps about 7 significant digits; deep stacks with sandwich norms (which rescale small branch
    outputs) reach ~1.5e-5 relative differences from mere operation order, exact again in float64.
    """
    diff = max_abs_diff(a, b)
    tol = atol * max(1.0, max_abs(a))
    assert diff <= tol, f"{what}: max abs diff {diff:.3e} > {tol:.1e}"


def cached_steps(model: Any, tokens: Tensor, prompt_len: int, **kwargs: Any) -> Tensor:
    """Last-position logits of incremental decoding with the kv cache, for positions prompt_len-1 .. n-1
    (`kwargs` go to every call)."""
    logits, cache = model(tokens[:, :prompt_len], return_intermediates=True, **kwargs)
    steps = [logits[:, -1]]
    for t in range(prompt_len + 1, tokens.shape[1] + 1):
        logits, cache = model(tokens[:, :t], cache=cache, return_intermediates=True, **kwargs)
        steps.append(logits[:, -1])
    return torch.stack(steps, dim=1)


def seeded_randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def seeded_mask(batch: int, seq: int, seed: int, *, empty_rows: bool = False) -> Tensor:
    """A boolean key mask; every row keeps its first position unless `empty_rows` empties row 0."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, seq, generator=gen) > 0.35
    mask[:, 0] = True
    if empty_rows:
        mask[0] = False
    return mask


# ---------------------------------------------------------------------------------------------- strategies

DIMS = (8, 16, 24, 32)
NORMS = ("layernorm", "use_rmsnorm", "use_simple_rmsnorm", "use_scalenorm")


@st.composite
def heads_and_dims(draw: st.DrawFn) -> dict[str, int]:
    heads = draw(st.integers(1, 4))
    dim = draw(st.sampled_from(DIMS))
    # with one head there is no output projection, so the head dimension must be the model dimension
    dim_head = dim if heads == 1 else draw(st.sampled_from((4, 8, 16)))
    return {"dim": dim, "heads": heads, "attn_dim_head": dim_head}


@st.composite
def attn_layers_spec(
    draw: st.DrawFn,
    cls: str,
    *,
    cross_attend: bool = False,
    positions: bool = True,
    layouts: bool = True,
) -> dict[str, Any]:
    """Options for an Encoder / Decoder / CrossAttender drawn from the supported families."""
    spec: dict[str, Any] = {"class": cls, **draw(heads_and_dims())}
    causal = cls == "Decoder"
    heads, dim_head = spec["heads"], spec["attn_dim_head"]
    if cross_attend and cls != "CrossAttender":
        spec["cross_attend"] = True
    has_cross = cross_attend or cls == "CrossAttender"
    has_self_attn = cls != "CrossAttender"

    # layer order
    layout_kind = draw(st.sampled_from(("depth", "custom", "par"))) if layouts else "depth"
    spec["depth"] = draw(st.integers(1, 3))
    if layout_kind == "custom":
        alphabet = ("a", "f") if not has_cross else (("c", "f") if not has_self_attn else ("a", "c", "f"))
        spec["custom_layers"] = draw(st.lists(st.sampled_from(alphabet), min_size=1, max_size=5))
    elif layout_kind == "par":
        block = 2 if not has_cross or not has_self_attn else 3
        spec["par_ratio"] = draw(st.integers(2, spec["depth"] * block))

    # normalisation
    norm = draw(st.sampled_from(NORMS))
    if norm != "layernorm":
        spec[norm] = True
    if draw(st.integers(0, 4)) == 0:
        spec["pre_norm"] = False
    elif draw(st.booleans()):
        spec["sandwich_norm"] = True

    # attention variants
    if draw(st.integers(0, 3)) == 0:
        spec["residual_attn"] = True
    if has_cross and draw(st.integers(0, 3)) == 0:
        spec["cross_residual_attn"] = True
    kv_heads = draw(st.sampled_from([k for k in range(1, heads + 1) if heads % k == 0]))
    if kv_heads != heads:
        spec["attn_kv_heads"] = kv_heads
    if draw(st.integers(0, 3)) == 0:
        spec["attn_qk_norm"] = True
    if draw(st.booleans()):
        spec["attn_gate_values"] = True
    # positions (only meaningful with self-attention)
    if positions and has_self_attn:
        kind = draw(st.sampled_from(("none", "rotary", "alibi", "rel_pos", "rotary+alibi")))
        if "rotary" in kind:
            spec["rotary_pos_emb"] = True
            # a rotary dim of 2 divides by zero in x-transformers (base rescaling), so dim_head 4 needs 4
            if dim_head == 4 or draw(st.booleans()):
                spec["rotary_emb_dim"] = draw(st.sampled_from([d for d in (4, 8) if d <= dim_head]))
            if causal and draw(st.booleans()):
                spec["rotary_xpos"] = True
                spec["rotary_xpos_scale_base"] = draw(st.sampled_from((8, 64, 512)))
        if "alibi" in kind:
            spec["alibi_pos_bias"] = True
            if draw(st.booleans()):
                spec["alibi_num_heads"] = draw(st.integers(1, heads))
        if kind == "rel_pos":
            spec["rel_pos_bias"] = True

    # x-transformers rejects flash attention with residual attention or T5 relative bias
    flash_ok = not (spec.get("residual_attn") or spec.get("cross_residual_attn") or spec.get("rel_pos_bias"))
    if flash_ok and draw(st.integers(0, 3)) == 0:
        spec["attn_flash"] = True

    # feed-forward
    spec["ff_mult"] = draw(st.sampled_from((1, 2, 4)))
    if draw(st.booleans()):
        spec["ff_glu"] = True
    activation = draw(st.sampled_from(("gelu", "ff_swish", "ff_relu_squared")))
    if activation != "gelu":
        spec[activation] = True
    if draw(st.booleans()):
        spec["ff_no_bias"] = True
    return spec


@st.composite
def token_wrapper_spec(
    draw: st.DrawFn,
    cls: str | None = None,
    *,
    max_mem_len: int = 0,
    memory_tokens: bool = True,
    cross_attend: bool = False,
) -> dict[str, Any]:
    """A TransformerWrapper around an Encoder or Decoder."""
    cls = cls or draw(st.sampled_from(("Encoder", "Decoder")))
    layers = draw(attn_layers_spec(cls, cross_attend=cross_attend))
    spec: dict[str, Any] = {
        "class": "TransformerWrapper",
        "num_tokens": draw(st.integers(2, 40)),
        "max_seq_len": draw(st.sampled_from((8, 16))),
        "attn_layers": layers,
    }
    if max_mem_len:
        spec["max_mem_len"] = max_mem_len
    if not draw(st.booleans()):
        spec["use_abs_pos_emb"] = False
    if memory_tokens and draw(st.integers(0, 2)) == 0:
        spec["num_memory_tokens"] = draw(st.integers(1, 3))
    tie = draw(st.integers(0, 3)) == 0
    if tie:
        spec["tie_embedding"] = True
    elif draw(st.integers(0, 3)) == 0:
        spec["emb_dim"] = draw(st.sampled_from([d for d in DIMS if d != layers["dim"]]))
    if draw(st.integers(0, 3)) == 0:
        spec["post_emb_norm"] = True
    if draw(st.integers(0, 3)) == 0:
        spec["emb_dropout"] = 0.1  # dropout is off in eval mode; the option must still build the same model
    return spec


@st.composite
def continuous_wrapper_spec(draw: st.DrawFn, *, max_mem_len: int = 0) -> dict[str, Any]:
    layers = draw(attn_layers_spec(draw(st.sampled_from(("Encoder", "Decoder")))))
    spec: dict[str, Any] = {
        "class": "ContinuousTransformerWrapper",
        "max_seq_len": draw(st.sampled_from((8, 16))),
        "attn_layers": layers,
    }
    if draw(st.booleans()):
        spec["dim_in"] = draw(st.sampled_from(DIMS))
    if draw(st.booleans()):
        spec["dim_out"] = draw(st.sampled_from(DIMS))
    if max_mem_len:
        spec["max_mem_len"] = max_mem_len
    if draw(st.integers(0, 2)) == 0:
        spec["num_memory_tokens"] = draw(st.integers(1, 3))
    if not draw(st.booleans()):
        spec["use_abs_pos_emb"] = False
    if draw(st.integers(0, 3)) == 0:
        spec["post_emb_norm"] = True
    return spec


@st.composite
def xtransformer_spec(draw: st.DrawFn) -> dict[str, Any]:
    enc = draw(attn_layers_spec("Encoder", layouts=False))
    dec = draw(attn_layers_spec("Decoder", cross_attend=True, layouts=False))
    dim = enc["dim"]
    spec: dict[str, Any] = {"class": "XTransformer", "dim": dim}
    num_tokens = draw(st.integers(4, 40))
    for prefix, layer in (("enc", enc), ("dec", dec)):
        spec[f"{prefix}_num_tokens"] = num_tokens
        spec[f"{prefix}_max_seq_len"] = 16
        for key, value in layer.items():
            if key in ("class", "dim", "cross_attend"):
                continue
            if key == "attn_dim_head" and layer["heads"] == 1:
                value = dim  # one head: the head dimension must be the shared model dim
            spec[f"{prefix}_{key}"] = value
    if draw(st.booleans()):
        spec["tie_token_emb"] = True
    return spec
