"""The option families issue 10 added, as tiny configs, and the harness that runs them in real releases.

`FAMILIES` maps a family to configs `(name, spec, flags)`; a release runs a config only when it took every
keyword of the spec as written (`converters/release_kwargs.py`: nothing ignored), so old spellings
(`attn_talking_heads`) get their own config. `build_in_release` builds, perturbs and runs a batch of
configs in one subprocess of the release (`tests/option_runner.py`); `convert_and_run` converts each state
dict through the chain and runs it in the installed xtf; `export_and_check` migrates to the current layout,
exports back and lets the release load the export strictly and reproduce its outputs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from xt_releases import run_in_release

import xtf_core
from xtf_converters import xtransformers
from xtf_converters.release_kwargs import as_release_built
from xtf_core.chain import migrate_file
from xtf_core.errors import ConversionError

RUNNER = Path(__file__).with_name("option_runner.py")
TOLERANCE = 1e-4


def _dec(**layer: Any) -> dict[str, Any]:
    return {
        "class": "TransformerWrapper",
        "num_tokens": 16,
        "max_seq_len": 8,
        "attn_layers": {"class": "Decoder", "dim": 8, "depth": 2, "heads": 2, "attn_dim_head": 4, **layer},
    }


def _enc(wrapper: dict[str, Any] | None = None, **layer: Any) -> dict[str, Any]:
    spec = _dec(**layer)
    spec["attn_layers"]["class"] = "Encoder"
    spec.update(wrapper or {})
    return spec


def _with(spec: dict[str, Any], **wrapper: Any) -> dict[str, Any]:
    return {**spec, **wrapper}


MASK = {"mask": True}
CONTEXT = {"context": True}

# family -> [(config name, spec, forward flags)]
FAMILIES: dict[str, list[tuple[str, dict[str, Any], dict[str, bool]]]] = {
    "num_mem_kv": [
        ("dec_mem_kv", _dec(attn_num_mem_kv=2), {}),
        ("enc_mem_kv", _enc(attn_num_mem_kv=2), MASK),
        ("cross_mem_kv", _dec(cross_attend=True, cross_attn_num_mem_kv=2), CONTEXT),
        ("cross_attn_mem_kv_shared", _dec(cross_attend=True, attn_num_mem_kv=2), CONTEXT),
    ],
    "macaron": [
        ("dec_macaron", _dec(macaron=True), {}),
        ("enc_macaron_post", _enc(macaron=True, pre_norm=False), MASK),
        ("dec_macaron_cross", _dec(macaron=True, cross_attend=True), CONTEXT),
    ],
    "scale_residual": [
        ("dec_scale_res", _dec(scale_residual=True), {}),
        ("dec_scale_res_const", _dec(scale_residual=True, scale_residual_constant=0.5), {}),
    ],
    "shift_tokens": [
        ("dec_shift", _dec(shift_tokens=1), {}),
        ("enc_shift", _enc(shift_tokens=1), MASK),
    ],
    "pooling": [
        ("enc_cls", _enc({"use_cls_token": True}), {}),
        ("enc_avg_pool", _enc({"average_pool_embed": True}), {}),
    ],
    "attn_on_attn": [
        ("dec_on_attn", _dec(attn_on_attn=True), {}),
        ("cross_on_attn", _dec(cross_attend=True, attn_on_attn=True), CONTEXT),
    ],
    "talking_heads": [
        ("dec_talking_old", _dec(attn_talking_heads=True), {}),
        ("dec_talking", _dec(attn_pre_talking_heads=True, attn_post_talking_heads=True), {}),
    ],
    "gate_residual": [("dec_gate_res", _dec(gate_residual=True), {})],
    "layerscale": [("dec_layerscale", _dec(use_layerscale=True), {})],
    "ff_post_act_ln": [("dec_post_act_ln", _dec(ff_post_act_ln=True), {})],
    "sparse_topk": [("dec_sparse_topk", _dec(attn_sparse_topk=2), {})],
    "head_scale": [("dec_head_scale", _dec(attn_head_scale=True), {})],
    "one_kv_head": [("dec_one_kv", _dec(attn_one_kv_head=True), {})],
    "max_attend_past": [("dec_attend_past", _dec(attn_max_attend_past=3), {})],
    "dynamic_pos_bias": [
        ("dec_dyn_pos", _dec(dynamic_pos_bias=True), {}),
        ("dec_dyn_pos_log", _dec(dynamic_pos_bias=True, dynamic_pos_bias_log_distance=True), {}),
    ],
    "l2norm_embed": [("dec_l2norm_embed", _dec(), {})],
    "cross_residual_attn": [
        ("dec_cross_res_attn", _dec(cross_attend=True, cross_residual_attn=True), CONTEXT),
    ],
    "qk_norm_groups": [
        ("dec_qk_groups", _dec(attn_qk_norm=True, attn_qk_norm_groups=2, attn_dim_head=8), {})
    ],
    "gate_value_heads": [("dec_gate_value_heads", _dec(attn_gate_value_heads=True), {})],
    "swiglu_values": [("dec_swiglu_values", _dec(attn_swiglu_values=True), {})],
    "softclamp": [
        ("dec_softclamp_logits", _dec(attn_softclamp_logits=True, attn_logit_softclamp_value=2.0), {}),
        ("dec_softclamp_output", _dec(softclamp_output=True, softclamp_output_value=2.0), {}),
    ],
    "value_rmsnorm": [("dec_value_rmsnorm", _dec(attn_value_rmsnorm=True), {})],
    "value_residual": [("dec_value_residual", _dec(add_value_residual=True), {})],
    "weight_tie": [
        ("dec_weight_tie", _dec(weight_tie_layers=True), {}),
        ("dec_execute_order", _dec(layers_execute_order=[1, 0, 1]), {}),
    ],
    "adaptive_norm": [
        ("dec_adaptive_ln", _dec(dim_condition=4, use_adaptive_layernorm=True), {"condition": True}),
        ("dec_adaptive_rms", _dec(dim_condition=4, use_adaptive_rmsnorm=True), {"condition": True}),
    ],
    "dynamic_tanh": [("dec_dyt", _dec(use_dynamic_tanh=True), {})],
    "num_output_heads": [("dec_output_heads", _with(_dec(), num_output_heads=2), {})],
    "interspersed_memory": [
        ("dec_mem_interspersed", _with(_dec(), num_memory_tokens=2, memory_tokens_interspersed_every=3), {}),
    ],
    "embed_num_tokens": [
        ("dec_embed_tokens", _with(_dec(), embed_num_tokens={"kind": 3}), {"embed_ids": True}),
    ],
    "probabilistic": [
        (
            "cont_probabilistic",
            {
                "class": "ContinuousTransformerWrapper",
                "max_seq_len": 8,
                "dim_in": 4,
                "dim_out": 4,
                "probabilistic": True,
                "attn_layers": {"class": "Decoder", "dim": 8, "depth": 2, "heads": 2, "attn_dim_head": 4},
            },
            {},
        ),
    ],
    "shift_mem_down": [
        ("dec_shift_mem_down", _with(_dec(), num_memory_tokens=2, shift_mem_down=1), {}),
    ],
}
FAMILIES["l2norm_embed"] = [("dec_l2norm_embed", _with(_dec(), l2norm_embed=True), {})]


def configs_for(
    release: str, names: list[str] | None = None
) -> list[tuple[str, dict[str, Any], dict[str, bool]]]:
    """The configs `release` built as written (every keyword taken by that name, none ignored; xtf may read
    an old name under today's, as `attn_talking_heads`)."""
    picked = []
    for configs in FAMILIES.values():
        for name, spec, flags in configs:
            if names is not None and name not in names:
                continue
            try:
                _, ignored, _ = as_release_built(spec, release, name)
            except ConversionError:
                continue
            if not ignored:
                picked.append((name, spec, flags))
    return picked


def build_in_release(
    release: str, configs: list[tuple[str, dict[str, Any], dict[str, bool]]], tmp: Path
) -> dict[str, dict[str, Any]]:
    """Build, perturb and run each config in `release` (one subprocess); {name: runner result}."""
    jobs = [{"name": n, "spec": s, "out": str(tmp / f"{n}.pt"), **f} for n, s, f in configs]
    job_file = tmp / f"build-{release}.json"
    job_file.write_text(json.dumps(jobs))
    done = run_in_release(release, str(RUNNER), str(job_file))
    return json.loads(done.stdout.strip().splitlines()[-1])


def _forward(model: Any, io: dict[str, Any]) -> torch.Tensor:
    kwargs = {k: v for k, v in io.items() if k not in ("x", "y")}
    with torch.no_grad():
        out = model(io["x"], **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _unpadded(diff: torch.Tensor, io: dict[str, Any]) -> torch.Tensor:
    mask = io.get("mask")
    if mask is not None and diff.dim() >= 2 and diff.shape[:2] == mask.shape:
        return diff[mask]
    return diff


def convert_and_run(release: str, name: str, spec: dict[str, Any], tmp: Path) -> tuple[float, Path]:
    """Convert the release's state dict, migrate it to the installed xtf; (max diff to the release, file)."""
    saved = torch.load(tmp / f"{name}.pt", weights_only=True)
    source = tmp / f"{name}.state.pt"
    torch.save(saved["state"], source)
    stamped, current = tmp / f"{name}.safetensors", tmp / f"{name}.now.safetensors"
    xtransformers.convert(source, stamped, release=release, config=copy.deepcopy(spec))
    migrate_file(stamped, current)
    out = _forward(xtf_core.load(current).eval(), saved["io"])
    return float(_unpadded((out - saved["io"]["y"]).abs(), saved["io"]).max()), current


def export_and_check(
    release: str, exports: dict[str, Path], specs: dict[str, dict[str, Any]], tmp: Path
) -> dict[str, Any]:
    """Export each migrated file back to `release`; the release builds the config as the user wrote it for
    that release (`specs`), loads the export strictly and reruns the inputs."""
    jobs = []
    for name, current in exports.items():
        exported = tmp / f"{name}.export.pt"
        xtransformers.export(current, exported, release=release)
        jobs.append(
            {
                "name": name,
                "spec": specs[name],
                "pt": str(exported),
                "io": str(tmp / f"{name}.pt"),
            }
        )
    job_file = tmp / f"check-{release}.json"
    job_file.write_text(json.dumps(jobs))
    done = run_in_release(release, str(RUNNER), str(job_file))
    return json.loads(done.stdout.strip().splitlines()[-1])
