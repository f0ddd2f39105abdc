"""Time xtf's forward and training step against x-transformers 2.31.10 with `attn_flash=True`, same run.

    python benchmarks/bench_forward.py                                  # CPU: 4-layer d256 decoder, 4 x 512
    python benchmarks/bench_forward.py --device cuda --dtype bf16       # d1024, 12 layers, 16 heads, 8 x 2048
    python benchmarks/bench_forward.py --dim 128 --depth 2 --seq 256 --repeat 3

Both models are built from one spec (a rotary decoder), with identical weights, and checked to agree
before anything is timed. A forward is `model(tokens)` in eval mode under `torch.inference_mode()`; a
training step is forward, cross-entropy, backward and `zero_grad` in train mode. The variants alternate
(so a noisy machine hurts both alike); ratios are x-transformers' median time over xtf's (above 1: xtf
is faster). `--compile` also times both under `torch.compile`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# size options left unset: (CPU value, CUDA value)
SIZES = {"dim": (256, 1024), "depth": (4, 12), "heads": (4, 16), "seq": (512, 2048), "batch": (4, 8)}


def fill_defaults(args: argparse.Namespace, cuda: bool) -> torch.dtype:
    """Set every size option (and `repeat`, where the script has it) left unset; return the dtype."""
    for name, (cpu_value, cuda_value) in {**SIZES, "repeat": (7, 20)}.items():
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, cuda_value if cuda else cpu_value)
    return DTYPES[args.dtype or ("bf16" if cuda else "fp32")]


def spec_for(args: argparse.Namespace) -> dict:
    return {
        "class": "TransformerWrapper",
        "num_tokens": args.num_tokens,
        "max_seq_len": args.seq,
        "attn_layers": {
            "class": "Decoder",
            "dim": args.dim,
            "depth": args.depth,
            "heads": args.heads,
            "rotary_pos_emb": True,
            "attn_flash": True,
        },
    }


def reference_model(spec: dict) -> torch.nn.Module:
    from x_transformers import Decoder, TransformerWrapper

    layers = {key: value for key, value in spec["attn_layers"].items() if key != "class"}
    wrapper = {key: value for key, value in spec.items() if key not in ("class", "attn_layers")}
    return TransformerWrapper(**wrapper, attn_layers=Decoder(**layers))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: fp32 (cpu), bf16 (cuda)"
    )
    parser.add_argument("--dim", type=int, default=None, help="default: 256 (cpu), 1024 (cuda)")
    parser.add_argument("--depth", type=int, default=None, help="default: 4 (cpu), 12 (cuda)")
    parser.add_argument("--heads", type=int, default=None, help="default: 4 (cpu), 16 (cuda)")
    parser.add_argument("--seq", type=int, default=None, help="default: 512 (cpu), 2048 (cuda)")
    parser.add_argument("--batch", type=int, default=None, help="default: 4 (cpu), 8 (cuda)")
    parser.add_argument("--num-tokens", type=int, default=256)
    parser.add_argument(
        "--repeat", type=int, default=None, help="timed runs per variant (default 7 cpu, 20 cuda)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="also time both models under torch.compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = fill_defaults(args, cuda)
    if args.threads:
        torch.set_num_threads(args.threads)

    import x_transformers

    import xtf_core

    spec = spec_for(args)
    torch.manual_seed(0)
    reference = reference_model(spec)
    ours = xtf_core.build(spec)
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.to(device=device, dtype=dtype)
    ours.to(device=device, dtype=dtype)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, args.num_tokens, (args.batch, args.seq), generator=generator).to(device)
    targets = torch.randint(0, args.num_tokens, (args.batch, args.seq), generator=generator).to(device)

    with torch.inference_mode():
        reference.eval(), ours.eval()
        difference = (reference(tokens).float() - ours(tokens).float()).abs().max().item()
    tolerance = 1e-3 if dtype == torch.float32 else 0.25
    assert difference <= tolerance, f"xtf and x-transformers disagree by {difference} (> {tolerance})"

    def forward(model: torch.nn.Module):
        def run() -> None:
            with torch.inference_mode():
                model(tokens)

        return run

    def train_step(model: torch.nn.Module):
        def run() -> None:
            logits = model(tokens)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
            loss.backward()
            model.zero_grad(set_to_none=True)

        return run

    models = {"x-transformers": reference, "xtf": ours}
    if args.compile:
        models.update({f"{k} compiled": torch.compile(v) for k, v in list(models.items())})
    print(
        f"x-transformers {x_transformers.__version__ if hasattr(x_transformers, '__version__') else '2.31.10'} "
        f"(attn_flash=True) vs xtf; {device} {str(dtype).removeprefix('torch.')}; dim {args.dim}, depth "
        f"{args.depth}, heads {args.heads}, batch {args.batch} x {args.seq} tokens, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; outputs agree within {difference:.2g}"
    )
    print(f"{'variant':36} {'min ms':>8} {'median ms':>10} {'xt/xtf':>8}")
    for phase, make, train in (("forward", forward, False), ("train step", train_step, True)):
        runs = {name: make(model) for name, model in models.items()}
        for model in models.values():
            model.train(train)
        for run in runs.values():  # warm-up (kernels, allocator, compilation)
            for _ in range(2):
                run()
        sync(device)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeat):
            for name, run in runs.items():
                sync(device)
                start = time.perf_counter()
                run()
                sync(device)
                times[name].append(time.perf_counter() - start)
        for suffix in ("", " compiled"):
            base, mine = f"x-transformers{suffix}", f"xtf{suffix}"
            if base not in times:
                continue
            reference_median = statistics.median(times[base])
            for name in (base, mine):
                median = statistics.median(times[name])
                ratio = f"{reference_median / median:7.2f}x" if name == mine else ""
                print(
                    f"{phase + ': ' + name:36} {min(times[name]) * 1e3:8.1f} {median * 1e3:10.1f} {ratio:>8}"
                )
    print("target: xt/xtf >= 1.1x for the forward and the train step")


if __name__ == "__main__":
    with contextlib.suppress(ImportError):  # x-transformers logs a warning for small rotary dims
        from loguru import logger

        logger.disable("x_transformers")
    main()
