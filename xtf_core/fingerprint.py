"""Behaviour fingerprint: a model's outputs on a fixed seeded input, stored at save time.

`xtf verify` rebuilds the model from a file (migrating it if needed), runs the same input and compares,
which proves that a migrated or converted file still computes the function it was saved with.
The input depends only on the spec (sizes), and is drawn from `torch.Generator().manual_seed(0)` on CPU.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .errors import VerificationError
from .model.layers import AttentionLayers
from .model.vit import ViTransformerWrapper
from .model.wrappers import ContinuousTransformerWrapper, TransformerWrapper, XTransformer

FINGERPRINT_VERSION = 1
BATCH = 2
SAMPLES = 64
TOLERANCE = {"float32": 1e-4, "float64": 1e-6, "bfloat16": 3e-2, "float16": 1e-2}


def _seq_len(max_seq_len: int | None) -> int:
    return max(2, min(8, max_seq_len or 8))


def _padding_mask(n: int) -> Tensor:
    mask = torch.ones((BATCH, n), dtype=torch.bool)
    mask[-1, n - n // 4 :] = False
    return mask


def _context_kwargs(layers: AttentionLayers, gen: torch.Generator, dtype: torch.dtype) -> dict[str, Tensor]:
    kwargs: dict[str, Tensor] = {}
    if layers.cross_attend:
        block = layers.layers[layers.layer_types.index("c")][1]
        while not hasattr(block, "to_k"):  # under token shift / layer scale wrappers
            block = block.fn
        context = torch.randn((BATCH, 4, block.to_k.in_features), generator=gen).to(dtype)
        kwargs |= {"context": context, "context_mask": _padding_mask(4)}
    if getattr(layers, "need_condition", False):  # adaptive norms / layer scale read a condition
        kwargs["condition"] = torch.randn((BATCH, layers.dim_condition), generator=gen).to(dtype)
    return kwargs


def _run(model: nn.Module) -> Tensor:
    """The fingerprint forward pass; the output is float64 on CPU."""
    from .spec import TRAINING_WRAPPERS

    if type(model).__name__ in TRAINING_WRAPPERS:
        model = model.net  # a training wrapper computes the function of the model it wraps
    gen = torch.Generator().manual_seed(0)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    def on_device(kwargs: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(device) for k, v in kwargs.items()}

    if isinstance(model, XTransformer):
        n_src = _seq_len(model.encoder.max_seq_len)
        n_tgt = _seq_len(model.decoder.net.max_seq_len)
        src = torch.randint(0, model.encoder.num_tokens, (BATCH, n_src), generator=gen)
        tgt = torch.randint(0, model.decoder.net.num_tokens, (BATCH, n_tgt), generator=gen)
        mask = _padding_mask(n_src)
        src, tgt, mask = src.to(device), tgt.to(device), mask.to(device)
        enc = model.encoder(src, mask=mask, return_embeddings=True)
        out = model.decoder.net(tgt, context=enc, context_mask=mask)
    elif isinstance(model, TransformerWrapper):
        layers = model.attn_layers
        n = _seq_len(model.max_seq_len)
        kwargs: dict[str, Any] = {"x": torch.randint(0, model.num_tokens, (BATCH, n), generator=gen)}
        if not layers.causal:
            kwargs["mask"] = _padding_mask(n)
        kwargs |= _context_kwargs(layers, gen, dtype)
        kwargs = on_device(kwargs)
        if model.embeds is not None:  # extra token embeddings read their ids (drawn last: others unchanged)
            kwargs["embed_ids"] = {
                name.removesuffix("_embed"): torch.randint(
                    0, emb.num_embeddings, (BATCH, n), generator=gen
                ).to(device)
                for name, emb in sorted(model.embeds.items())  # the spec's order may differ after a reload
            }
        out = model(**kwargs)
    elif isinstance(model, ContinuousTransformerWrapper):
        layers = model.attn_layers
        n = _seq_len(model.max_seq_len)
        dim_in = model.project_in.in_features if isinstance(model.project_in, nn.Linear) else layers.dim
        kwargs = {"x": torch.randn((BATCH, n, dim_in), generator=gen).to(dtype)}
        if not layers.causal:
            kwargs["mask"] = _padding_mask(n)
        kwargs |= _context_kwargs(layers, gen, dtype)
        out = model(**on_device(kwargs))
    elif isinstance(model, ViTransformerWrapper):
        shape = (BATCH, model.channels, model.image_size, model.image_size)
        out = model(torch.randn(shape, generator=gen).to(dtype).to(device))
    elif isinstance(model, AttentionLayers):
        n = 8
        kwargs = {"x": torch.randn((BATCH, n, model.dim), generator=gen).to(dtype)}
        if not model.causal:
            kwargs["mask"] = _padding_mask(n)
        kwargs |= _context_kwargs(model, gen, dtype)
        out = model(**on_device(kwargs))
    else:
        raise VerificationError(f"no fingerprint input is defined for {type(model).__name__}")
    if isinstance(out, (tuple, list)):  # several output heads
        out = torch.cat([t.flatten() for t in out])
    return out.detach().to("cpu", torch.float64)


def _run_in_eval_mode(model: nn.Module) -> Tensor:
    """The fingerprint forward pass in eval mode; the model's own mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        return _run(model)
    finally:
        model.train(was_training)


def _dtype_name(model: nn.Module) -> str:
    param = next(iter(model.parameters()), None)
    return str(param.dtype).removeprefix("torch.") if param is not None else "float32"


@torch.no_grad()
def compute_fingerprint(model: nn.Module) -> dict[str, Any]:
    """The fingerprint record stored under `xtf.fingerprint`."""
    out = _run_in_eval_mode(model)
    flat = out.flatten()
    step = max(1, flat.numel() // SAMPLES)
    return {
        "version": FINGERPRINT_VERSION,
        "dtype": _dtype_name(model),
        "shape": list(out.shape),
        "sum": float(flat.sum()),
        "abs_sum": float(flat.abs().sum()),
        "samples": [float(v) for v in flat[::step][:SAMPLES]],
    }


def compare_fingerprint(model: nn.Module, stored: dict[str, Any], where: str) -> float:
    """Recompute and compare; returns the largest sample difference, raises VerificationError on mismatch."""
    if stored.get("version") != FINGERPRINT_VERSION:
        raise VerificationError(
            f"{where}: fingerprint version {stored.get('version')!r} is unknown to this xtf"
        )
    now = compute_fingerprint(model)
    if now["shape"] != stored["shape"]:
        raise VerificationError(
            f"{where}: output shape {now['shape']} differs from the stored {stored['shape']}"
        )
    tol = max(TOLERANCE.get(stored.get("dtype", "float32"), 1e-2), TOLERANCE.get(now["dtype"], 1e-2))
    diffs = [abs(a - b) for a, b in zip(now["samples"], stored["samples"])]
    max_diff = max(diffs, default=0.0)
    scale = max(1.0, max((abs(v) for v in stored["samples"]), default=1.0))
    abs_sum_diff = abs(now["abs_sum"] - stored["abs_sum"]) / max(1.0, abs(stored["abs_sum"]))
    if max_diff > tol * scale or abs_sum_diff > tol or not math.isfinite(now["abs_sum"]):
        raise VerificationError(
            f"{where}: the model no longer computes its saved function (max sample difference {max_diff:.3g}, "
            f"relative |sum| difference {abs_sum_diff:.3g}, tolerance {tol:g}); the file or a migration step is wrong"
        )
    return max_diff


@torch.no_grad()
def smoke_run(model: nn.Module, where: str) -> None:
    """For files without a fingerprint: every tensor finite, and the model runs to finite outputs."""
    bad = [
        name
        for name, t in model.state_dict().items()
        if t.is_floating_point() and not torch.isfinite(t).all()
    ]
    if bad:
        raise VerificationError(f"{where}: tensor {bad[0]!r} holds NaN or Inf ({len(bad)} tensor(s) in all)")
    out = _run_in_eval_mode(model)
    if not torch.isfinite(out).all():
        raise VerificationError(f"{where}: the model runs but produces NaN or Inf outputs")
