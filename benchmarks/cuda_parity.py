"""Parity with x-transformers 2.31.10 on an accelerator: float32 (TF32 off) and bf16, on common configs.

Each config is built twice from one spec (x-transformers and xtf), given the same perturbed weights on the
CPU, moved to the device and run on the same inputs. float32 outputs must agree within 1e-4 (scaled by
the output's magnitude above 1): kernels differ from the CPU's, the function must not. Under bf16 autocast both
libraries round, so xtf's distance from the float32 reference must stay within twice x-transformers' own
(plus a small floor). Greedy generation with the key/value cache must give the same tokens in float32.

    python benchmarks/cuda_parity.py --device cuda      # prints one line per config, exits 1 on a failure
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from parity_configs import paired  # noqa: E402


def _tw(layers: dict, **kwargs: object) -> dict:
    return {
        "class": "TransformerWrapper",
        "num_tokens": 256,
        "max_seq_len": 256,
        "attn_layers": layers,
        **kwargs,
    }


DEC = {"class": "Decoder", "dim": 128, "depth": 2, "heads": 4, "attn_dim_head": 32}
ENC = {"class": "Encoder", "dim": 128, "depth": 2, "heads": 4, "attn_dim_head": 32}

CONFIGS: dict[str, dict] = {
    "dec_plain": _tw(DEC),
    "dec_rotary_flash": _tw({**DEC, "rotary_pos_emb": True, "attn_flash": True}),
    "dec_gqa_qknorm_rmsnorm": _tw({**DEC, "attn_kv_heads": 2, "attn_qk_norm": True, "use_rmsnorm": True}),
    "dec_alibi_glu": _tw({**DEC, "alibi_pos_bias": True, "ff_glu": True}),
    "enc_relpos_postnorm": _tw({**ENC, "rel_pos_bias": True, "pre_norm": False}),
    "dec_cross_sandwich": _tw({**DEC, "cross_attend": True, "sandwich_norm": True}),
    "dec_memkv_valres": _tw({**DEC, "attn_num_mem_kv": 4, "add_value_residual": True}),
    "dec_macaron_scale_res": _tw({**DEC, "macaron": True, "scale_residual": True}),
    "dec_softclamp_gate_heads": _tw({**DEC, "attn_softclamp_logits": True, "attn_gate_value_heads": True}),
    "dec_talking_heads_sink_rmsnorm": _tw(
        {
            **DEC,
            "attn_pre_talking_heads": True,
            "attn_post_talking_heads": True,
            "attn_head_learned_sink": True,
            "attn_value_rmsnorm": True,
            "attn_head_scale": True,
        }
    ),
    "dec_mla_rope_subheads": _tw(
        {
            **DEC,
            "rotary_pos_emb": True,
            "attn_use_latent_kv": True,
            "attn_dim_latent_kv": 64,
            "attn_latent_rope_subheads": 1,
            "attn_use_latent_q": True,
            "attn_dim_latent_q": 64,
        }
    ),
    "dec_local_zero_kv_gates": _tw(
        {
            **DEC,
            "attn_max_attend_past": 16,
            "attn_add_zero_kv": True,
            "attn_num_mem_kv": 2,
            "attn_gate_values": True,
            "attn_gate_values_headwise": True,
            "attn_output_gate": True,
            "attn_qk_rmsnorm": True,
        }
    ),
}


def _run(model, tokens, context, mask):
    kwargs = {"mask": mask}
    if context is not None:
        kwargs["context"] = context
    with torch.no_grad():
        return model(tokens, **kwargs).float()


def _tol(reference: torch.Tensor, atol: float) -> float:
    return atol * max(1.0, float(reference.abs().max()))


def check(name: str, spec: dict, device: str) -> list[str]:
    try:
        ref, ours = paired(spec)
    except Exception as exc:  # noqa: BLE001 - an option the installed xtf or reference lacks
        return [f"{name}: not built ({type(exc).__name__}: {str(exc)[:120]})"]
    ref, ours = ref.to(device), ours.to(device)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (4, 128), generator=gen).to(device)
    mask = (torch.rand(4, 128, generator=gen) > 0.2).to(device)
    mask[:, 0] = True
    cross = spec["attn_layers"].get("cross_attend")
    context = torch.randn(4, 32, spec["attn_layers"]["dim"], generator=gen).to(device) if cross else None
    failures = []

    expected, actual = _run(ref, tokens, context, mask), _run(ours, tokens, context, mask)
    diff32 = float((expected - actual).abs().max())
    if diff32 > _tol(expected, 1e-4):
        failures.append(f"{name}: float32 max diff {diff32:.2e}")

    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        err_ref = float((_run(ref, tokens, context, mask) - expected).abs().max())
        err_ours = float((_run(ours, tokens, context, mask) - expected).abs().max())
    if err_ours > 2 * err_ref + _tol(expected, 1e-2):
        failures.append(f"{name}: bf16 error {err_ours:.2e} vs x-transformers' {err_ref:.2e}")

    if spec["attn_layers"]["class"] == "Decoder" and not cross:
        from x_transformers import AutoregressiveWrapper as RefAR

        import xtf_core

        prompt = tokens[:, :8]
        with torch.no_grad():
            torch.manual_seed(0)
            want = RefAR(ref).generate(prompt, 16, temperature=0.0, cache_kv=True)
            torch.manual_seed(0)
            got = xtf_core.AutoregressiveWrapper(ours).generate(prompt, 16, temperature=0.0, cache_kv=True)
        if not torch.equal(want, got):
            failures.append(f"{name}: greedy cached generation differs")
    print(f"{name:28s} float32 {diff32:.1e}  bf16 err xtf {err_ours:.1e} / x-transformers {err_ref:.1e}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"device: {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'})")
    failures = [f for name, spec in CONFIGS.items() for f in check(name, spec, args.device)]
    for failure in failures:
        print("FAIL", failure)
    print(f"{len(CONFIGS) - len({f.split(':')[0] for f in failures})} of {len(CONFIGS)} configs agree")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
