"""Generate the table of every x-transformers 2.31.10 constructor keyword in docs/compatibility.md.

    .venv/bin/python scripts/keyword_table.py          # rewrite the table in docs/compatibility.md
    .venv/bin/python scripts/keyword_table.py --check  # exit 1 if the committed table is out of date

The keywords come from `inspect.signature` of the real classes (AttentionLayers; Attention's with the `attn_`
and `cross_attn_` prefixes; FeedForward's with `ff_`; TransformerWrapper, ContinuousTransformerWrapper,
XTransformer, AutoregressiveWrapper). For each keyword the smallest model is built both ways with a
plausible non-default value (`plausible_value`):

- `supported`: xtf builds it, loads x-transformers' weights with `strict=True`, and the eval-mode outputs
  agree within 1e-5;
- `refused`: xtf raises `UnsupportedOptionError` naming the keyword;
- `n/a`: x-transformers 2.31.10 itself fails at that value alone (it needs companions this script does not
  guess), so there is nothing to compare;
- `MISMATCH` / `ERROR`: xtf builds but computes something else, or fails with another exception (both are
  bugs; the table shows them so they are not missed).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "compatibility.md"
START, END = "<!-- keyword-table:start -->", "<!-- keyword-table:end -->"

# Keywords AttentionLayers passes to Attention / FeedForward itself (a prefixed copy would be a duplicate).
SET_BY_LAYERS = {
    "attn": {"dim", "heads", "causal", "qkv_receive_diff_residuals", "learned_value_residual_mix",
             "rotate_num_heads", "output_proj_depth"},
    "cross_attn": {"dim", "heads", "inverted_attention", "output_proj_depth"},
    "ff": {"dim", "output_proj_depth"},
}  # fmt: skip
REQUIRED = {"self", "dim", "num_tokens", "max_seq_len", "attn_layers", "net", "kwargs"}


@dataclass(frozen=True)
class Keyword:
    group: str  # AttentionLayers, attn_, cross_attn_, ff_, TransformerWrapper, ...
    name: str  # as passed to the constructor (prefixed for attn_/cross_attn_/ff_)
    default: Any


def _params(cls: type) -> list[inspect.Parameter]:
    return [
        p
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in REQUIRED
    ]


def keywords() -> list[Keyword]:
    """Every 2.31.10 constructor keyword this table covers, from the real classes' signatures."""
    import x_transformers
    from x_transformers import x_transformers as xt

    found: list[Keyword] = []
    found += [Keyword("AttentionLayers", p.name, p.default) for p in _params(xt.AttentionLayers)]
    for prefix in ("attn", "cross_attn"):
        found += [
            Keyword(f"{prefix}_", f"{prefix}_{p.name}", p.default)
            for p in _params(xt.Attention)
            if p.name not in SET_BY_LAYERS[prefix]
        ]
    found += [
        Keyword("ff_", f"ff_{p.name}", p.default)
        for p in _params(xt.FeedForward)
        if p.name not in SET_BY_LAYERS["ff"]
    ]
    for cls in (
        x_transformers.TransformerWrapper,
        x_transformers.ContinuousTransformerWrapper,
        x_transformers.XTransformer,
        x_transformers.AutoregressiveWrapper,
    ):
        found += [Keyword(cls.__name__, p.name, p.default) for p in _params(cls)]
    return found


# ---------------------------------------------------------------------------------------------- values

# Values for keywords whose default (None, a string, a dict) says nothing about a plausible other value,
# and companions some keywords need to mean anything.
OVERRIDES: dict[str, Any] = {
    "depth": 3, "heads": 4, "dim_condition": 8, "alibi_num_heads": 1, "rotary_emb_dim": 4, "rotate_num_heads": 1,
    "custom_layers": ["a", "f", "a", "f", "f"], "layers_execute_order": [0, 1, 0, 1, 2, 3], "sandwich_coef": 1,
    "par_ratio": 2, "disable_abs_pos_emb": True, "dim_context": 8, "sparse_topk": 2, "gate_values_rank": 2,
    "output_gate_rank": 2, "output_proj_depth": 2, "max_attend_past": 2, "hybrid_fold_axial_dim": 2,
    "kv_heads": 1, "value_dim_head": 4, "dim_out": 8, "dim_latent_q": 8, "dim_latent_kv": 8,
    "latent_rope_subheads": 1, "softclamp_value": 10.0, "emb_dim": 8, "num_memory_tokens": 2,
    "memory_tokens_interspersed_every": 3, "tie_embedding_scale": 0.5, "logits_dim": 5, "dim_pooled_tokens": 8,
    "dim_in": 4, "dim_head": 8, "embed_num_tokens": {"type": 3}, "qk_norm_groups": 2, "qk_norm_scale": 5,
    "alibi_pos_bias": True, "rel_pos_num_buckets": 8, "shift_tokens": 1,
    "mask_prob": 0.25, "ignore_index": 0, "pad_value": 1, "tie_token_emb": True, "num_cls_tokens": 2,
    "num_pooled_tokens": 2, "attn_pool_depth": 2, "mixture_of_softmax_k": 2, "scale_residual_constant": 0.5,
    "layerscale_init_value": 0.1, "dynamic_tanh_init_alpha": 0.5, "rotary_interpolation_factor": 2.0,
    "rotary_base_rescale_factor": 2.0, "rotary_xpos_scale_base": 64, "rel_pos_max_distance": 64, "max_mem_len": 4, "shift_mem_down": 1,
    "cope_max_pos": 8, "num_mem_kv": 2, "value_rmsnorm": True, "mult": 2,
}  # fmt: skip
MODULE_VALUED = {"custom_attn_fn", "hybrid_module", "custom_activation", "token_emb", "to_logits",
                 "project_in", "project_out"}  # fmt: skip
COMPANIONS: dict[str, dict[str, Any]] = {
    "alibi_num_heads": {"alibi_pos_bias": True},
    "rotary_emb_dim": {"rotary_pos_emb": True},
    "rotary_xpos": {"rotary_pos_emb": True},
    "rotary_xpos_scale_base": {"rotary_xpos": True},
    "rotary_interpolation_factor": {"rotary_pos_emb": True},
    "rotary_base_rescale_factor": {"rotary_pos_emb": True},
    "rotate_num_heads": {"rotary_pos_emb": True},
    "rel_pos_num_buckets": {"rel_pos_bias": True},
    "rel_pos_max_distance": {"rel_pos_bias": True},
    "sandwich_coef": {"depth": 2},
    "scale_residual_constant": {"scale_residual": True},
    "layerscale_init_value": {"use_layerscale": True},
    "dynamic_tanh_init_alpha": {"use_dynamic_tanh": True},
    "learned_value_residual_mix": {"add_value_residual": True},
    "softclamp_output_value": {"softclamp_output": True},
    "adaptive_condition_mlp_expansion": {"adaptive_condition_mlp": True, "use_adaptive_layernorm": True,
                                         "dim_condition": 8},
    "dim_condition": {"use_adaptive_layernorm": True},
    "adaptive_condition_mlp": {"use_adaptive_layernorm": True, "dim_condition": 8},
    "dynamic_pos_bias_log_distance": {"dynamic_pos_bias": True},
    "dynamic_pos_bias_mlp_depth": {"dynamic_pos_bias": True},
    "dynamic_pos_bias_norm": {"dynamic_pos_bias": True},
    "layer_integrate_use_softmax": {"integrate_layers": True},
    "hyper_conn_sinkhorn_iters": {"num_residual_streams": 2},
    "num_cls_tokens": {"use_cls_token": True},
    "num_pooled_tokens": {"attn_pool": True},
    "attn_pool_depth": {"attn_pool": True},
    "dim_pooled_tokens": {"attn_pool": True},
    "mixture_of_softmax_k": {"mixture_of_softmax": True},
    "train_max_recycle_steps": {"recycling": True},
    "looped": {"layers.pre_and_post_norm": True},
    "max_looped_steps": {"looped": True, "layers.pre_and_post_norm": True},
    "use_adaptive_layernorm": {"dim_condition": 8},
    "use_adaptive_rmsnorm": {"dim_condition": 8},
    "use_adaptive_layerscale": {"dim_condition": 8},
    "memory_tokens_interspersed_every": {"num_memory_tokens": 1},
    "tie_embedding_scale": {"tie_embedding": True},
    "squeeze_out_last_dim": {"logits_dim": 1},
    "shift_mem_down": {"max_mem_len": 4},
    "use_identity_if_same_dim": {"dim_in": 16, "dim_out": 16},
    "next_embed_loss_weight": {"net.add_continuous_pred_head": True},
    # Attention (prefix-free names; the prefix is added with the keyword)
    "qk_norm_groups": {"qk_norm": True},
    "qk_norm_scale": {"qk_norm": True},
    "qk_norm_dim_scale": {"qk_norm": True},
    "gate_values_rank": {"gate_values": True},
    "gate_values_headwise": {"gate_values": True},
    "output_gate_rank": {"output_gate": True},
    "output_gate_headwise": {"output_gate": True},
    "logit_softclamp_value": {"softclamp_logits": True},
    "gumbel_softmax_temp": {"gumbel_softmax": True},
    "gumbel_softmax_hard": {"gumbel_softmax": True},
    "laser_softclamp_value": {"laser": True},
    "cope_max_pos": {"use_cope": True},
    "cope_soft_onehot_pos": {"use_cope": True},
    "cope_talking_heads": {"use_cope": True},
    "rel_proj_num_distance_basis": {"use_rel_proj_pos_bias": True},
    "rel_proj_max_dist": {"use_rel_proj_pos_bias": True},
    "dim_latent_q": {"use_latent_q": True},
    "dim_latent_kv": {"use_latent_kv": True},
    "latent_rope_subheads": {"use_latent_kv": True, "dim_latent_kv": 8},
    "data_dependent_alibi_per_row": {"data_dependent_alibi": True},
    "data_dependent_alibi_per_row_dim_head": {"data_dependent_alibi": True, "data_dependent_alibi_per_row": True},
    "sparse_topk_straight_through": {"sparse_topk": 2},
    "orthog_projected_values_per_head": {"orthog_projected_values": True},
    "gumbel_softmax": {},
    "glu_mult_bias": {"glu": True},
    "glu_gate_softclamp_value": {"glu_softclamp": True},
    "glu_up_softclamp_value": {"glu_softclamp": True},
}  # fmt: skip


def bare(keyword: Keyword) -> str:
    for prefix in ("cross_attn_", "attn_", "ff_"):
        if keyword.group == prefix:
            return keyword.name[len(prefix) :]
    return keyword.name


def plausible_value(keyword: Keyword) -> Any:
    """A non-default value for `keyword` (None where the table cannot pick one)."""
    name, default = bare(keyword), keyword.default
    if name in MODULE_VALUED:
        from torch import nn

        return nn.Embedding(20, 16) if name == "token_emb" else nn.Identity()
    if name in OVERRIDES and OVERRIDES[name] != default:
        return OVERRIDES[name]
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return 2 if default in (0, 1) else default // 2
    if isinstance(default, float):
        return 0.1 if default == 0 else default * 0.5
    return None


def companions(keyword: Keyword) -> dict[str, Any]:
    """Options the keyword needs beside it, prefixed like the keyword itself (`net.`: the wrapped model's,
    `layers.`: the attention stack's)."""
    extra = COMPANIONS.get(bare(keyword), {})
    prefix = keyword.group if keyword.group in ("attn_", "cross_attn_", "ff_") else ""
    return {(k if k.startswith(("net.", "layers.")) else prefix + k): v for k, v in extra.items()}


def call_extras(keyword: Keyword) -> dict[str, Any]:
    """Forward keywords a model built with `keyword` needs."""
    import torch

    gen = torch.Generator().manual_seed(2)
    name = bare(keyword)
    if name == "embed_num_tokens":
        return {"embed_ids": {"type": torch.randint(0, 3, (2, 6), generator=gen)}}
    if name in ("dim_condition", "use_adaptive_layernorm", "use_adaptive_rmsnorm", "use_adaptive_layerscale",
                "adaptive_condition_mlp", "adaptive_condition_mlp_expansion"):  # fmt: skip
        return {"condition": torch.randn(2, 8, generator=gen)}
    if name in ("recycling", "train_max_recycle_steps"):
        return {"recycle_steps": 2}
    return {}


# ---------------------------------------------------------------------------------------------- building


def _layer_kwargs(extra: dict[str, Any]) -> dict[str, Any]:
    return {"dim": 16, "depth": 2, "heads": 2, "attn_dim_head": 8, **extra}


def build_pair(lib: Any, keyword: Keyword, value: Any, *, causal: bool = True) -> Any:
    """The smallest model using `keyword=value` from `lib` (x_transformers or xtf_core), and its call."""
    import torch

    wanted = companions(keyword)
    extra = {
        keyword.name: value,
        **{k: v for k, v in wanted.items() if not k.startswith(("net.", "layers."))},
    }
    stack_extra = {k[len("layers.") :]: v for k, v in wanted.items() if k.startswith("layers.")}
    net_extra = {k[len("net.") :]: v for k, v in wanted.items() if k.startswith("net.")}
    group = keyword.group
    stack = lib.Decoder if causal else lib.Encoder
    if keyword.name in ("causal", "cross_attend"):  # set on a plain AttentionLayers
        stack = getattr(lib, "AttentionLayers", None) or lib.x_transformers.AttentionLayers
    tokens = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(0))
    calls = call_extras(keyword)
    if group in ("AttentionLayers", "attn_", "ff_", "cross_attn_"):
        if group == "cross_attn_":
            extra["cross_attend"] = True
        layers = stack(**_layer_kwargs(extra))
        model = lib.TransformerWrapper(num_tokens=20, max_seq_len=8, attn_layers=layers)
        dim_context = extra.get("cross_attn_dim_context", 16)
        call: dict[str, Any] = {"x": tokens, **calls}
        if group == "cross_attn_" or keyword.name == "cross_attend":
            call["context"] = torch.randn(2, 3, dim_context, generator=torch.Generator().manual_seed(1))
        return model, call
    if group == "TransformerWrapper":
        layers = stack(**_layer_kwargs(stack_extra))
        model = lib.TransformerWrapper(**{"num_tokens": 20, "max_seq_len": 8, **extra}, attn_layers=layers)
        return model, {"x": tokens, **calls}
    if group == "ContinuousTransformerWrapper":
        if keyword.name not in ("project_in", "project_out"):
            extra = {"dim_in": 4, "dim_out": 3, **extra}
        layers = stack(**_layer_kwargs(stack_extra))
        model = lib.ContinuousTransformerWrapper(max_seq_len=8, attn_layers=layers, **extra)
        dim_in = extra.get("dim_in") or 16
        return model, {"x": torch.randn(2, 6, dim_in, generator=torch.Generator().manual_seed(0)), **calls}
    if group == "XTransformer":
        sizes = (("num_tokens", 20), ("max_seq_len", 8), ("depth", 1), ("heads", 2), ("attn_dim_head", 8))
        base = {f"{side}_{k}": v for side in ("enc", "dec") for k, v in sizes}
        return lib.XTransformer(dim=16, **base, **extra), {"src": tokens, "tgt": tokens}
    if group == "AutoregressiveWrapper":
        layers = lib.Decoder(**_layer_kwargs({}))
        net = lib.TransformerWrapper(num_tokens=20, max_seq_len=8, attn_layers=layers, **net_extra)
        return lib.AutoregressiveWrapper(net, **extra), {"x": tokens}
    raise ValueError(group)


def _outputs(model: Any, call: dict[str, Any]) -> Any:
    import torch

    torch.manual_seed(0)
    random.seed(0)
    with torch.no_grad():
        return model.eval()(**call)


def xtf_status(keyword: Keyword) -> str:
    """`refused` if building the xtf model raises UnsupportedOptionError naming the keyword, else `built`."""
    import xtf_core
    from xtf_core.errors import UnsupportedOptionError

    value = plausible_value(keyword)
    last: Exception | None = None
    for causal in (True, False):
        try:
            build_pair(xtf_core, keyword, value, causal=causal)
            return "built"
        except UnsupportedOptionError as exc:
            if f"'{keyword.name}'" in str(exc) or f"'{bare(keyword)}'" in str(exc):
                return "refused"
            last = exc
        except Exception as exc:  # noqa: BLE001 - any other failure is reported, not hidden
            last = exc
    return f"error: {type(last).__name__}"


def classify(keyword: Keyword) -> str:
    """The table status of one keyword (see the module docstring)."""
    import torch

    import xtf_core
    from xtf_core.errors import UnsupportedOptionError

    sys.path.insert(0, str(ROOT / "tests"))
    from parity_configs import max_abs, max_abs_diff

    value = plausible_value(keyword)
    if value is None:
        return "n/a"
    for causal in (True, False):
        try:
            torch.manual_seed(0)
            reference, call = build_pair(_xt(), keyword, value, causal=causal)
            _outputs(reference, call)
        except Exception:  # noqa: BLE001 - the reference refusing the value means "not valid alone"
            continue
        try:
            ours, _ = build_pair(xtf_core, keyword, value, causal=causal)
        except UnsupportedOptionError as exc:
            named = f"'{keyword.name}'" in str(exc) or f"'{bare(keyword)}'" in str(exc)
            return "refused" if named else "ERROR (refusal names another option)"
        except Exception as exc:  # noqa: BLE001
            return f"ERROR ({type(exc).__name__})"
        try:
            ours.load_state_dict(reference.state_dict(), strict=True)
            expected, got = _outputs(reference, call), _outputs(ours, call)
            diff = max_abs_diff(_tensors(expected), _tensors(got))
        except Exception as exc:  # noqa: BLE001
            return f"MISMATCH ({type(exc).__name__})"
        return "supported" if diff <= 1e-5 * max(1.0, max_abs(_tensors(expected))) else "MISMATCH"
    return "n/a"


def _tensors(out: Any) -> Any:
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return type(out)(_tensors(t) for t in out if isinstance(t, (torch.Tensor, tuple, list)))
    return ()


def _xt() -> Any:
    import x_transformers

    with contextlib.suppress(ImportError):
        from loguru import logger

        logger.disable("x_transformers")
    return x_transformers


# ---------------------------------------------------------------------------------------------- the table


def render(rows: list[tuple[Keyword, str]]) -> str:
    counts: dict[str, int] = {}
    for _, status in rows:
        key = status.split(" ")[0]
        counts[key] = counts.get(key, 0) + 1
    valid = len(rows) - counts.get("n/a", 0)
    lines = [
        START,
        "",
        f"{len(rows)} keywords; of the {valid} that x-transformers 2.31.10 builds at the value tried, "
        f"{counts.get('supported', 0)} are supported with parity and {counts.get('refused', 0)} are refused "
        "with `UnsupportedOptionError`. Generated by `scripts/keyword_table.py` (see its docstring for how "
        "each keyword is tried); `tests/test_keyword_table.py` fails when the table and the code disagree.",
        "",
        "| group | keyword | 2.31.10 default | xtf |",
        "|---|---|---|---|",
    ]
    for keyword, status in rows:
        default = "—" if keyword.default is inspect.Parameter.empty else _short(keyword.default)
        lines.append(f"| {keyword.group} | `{keyword.name}` | `{default}` | {status} |")
    lines += ["", END]
    return "\n".join(lines)


def _short(value: Any) -> str:
    text = repr(value).replace("|", "\\|")
    return text if len(text) <= 40 else text[:37] + "..."


def parse(text: str) -> dict[tuple[str, str], str]:
    """(group, keyword) -> status, from the committed table."""
    body = text[text.index(START) : text.index(END)]
    pattern = r"^\| ([^|]+) \| `([^`]+)` \| .* \| ([^|]+) \|$"
    return {(m.group(1).strip(), m.group(2)): m.group(3).strip() for m in re.finditer(pattern, body, re.M)}


def generate() -> str:
    rows = []
    with contextlib.redirect_stderr(io.StringIO()):
        for keyword in keywords():
            rows.append((keyword, classify(keyword)))
    return render(rows)


def write(table: str) -> None:
    text = DOC.read_text()
    if START in text:
        text = text[: text.index(START)] + table + text[text.index(END) + len(END) :]
    else:
        text = (
            text.rstrip("\n") + "\n\n## Every x-transformers 2.31.10 constructor keyword\n\n" + table + "\n"
        )
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed table is out of date")
    args = parser.parse_args(argv)
    table = generate()
    if args.check:
        text = DOC.read_text()
        current = text[text.index(START) : text.index(END) + len(END)] if START in text else ""
        if current != table:
            print("docs/compatibility.md: the keyword table is out of date; run scripts/keyword_table.py")
            return 1
        return 0
    write(table)
    print(table.splitlines()[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
