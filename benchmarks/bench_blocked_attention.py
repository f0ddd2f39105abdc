"""Time one causal attention's forward plus backward on the CPU: xtf's blocked training path against the
SDPA flash kernel, over a grid of sizes, same run. Re-measures the bounds of `blocked_attention.applies`.

    python benchmarks/bench_blocked_attention.py --threads 2

Each row prints both medians, their ratio (flash over blocked: above 1, the blocked path is faster), the
largest difference of output and gradients, and whether `applies` takes the blocked path at that size.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from xtf_core.model.blocked_attention import applies, blocked_causal_attention

# (batch, heads, positions, head size)
SIZES = [
    (4, 4, 128, 64),
    (16, 8, 128, 64),
    (4, 4, 256, 64),
    (8, 8, 256, 32),
    (4, 4, 512, 32),
    (4, 4, 512, 64),
    (4, 4, 512, 128),
    (2, 4, 1024, 64),
    (1, 16, 1024, 128),
    (1, 1, 1024, 16),
    (1, 4, 2048, 64),
]


def flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


def forward_backward(kernel, inputs: list[torch.Tensor], grad: torch.Tensor) -> list[torch.Tensor]:
    """The output and the three input gradients of one call of `kernel`."""
    out = kernel(*inputs, inputs[0].shape[-1] ** -0.5)
    return [out.detach(), *torch.autograd.grad(out, inputs, grad)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed runs per variant and size")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; forward + backward, float32")
    print(f"{'b, h, n, d':>18} {'flash ms':>9} {'blocked ms':>11} {'ratio':>6} {'max diff':>9}  applies")
    for b, h, n, d in SIZES:
        generator = torch.Generator().manual_seed(n)
        inputs = [torch.randn(b, h, n, d, generator=generator, requires_grad=True) for _ in range(3)]
        grad = torch.randn(b, h, n, d, generator=generator)
        kernels = {"flash": flash, "blocked": blocked_causal_attention}
        results = [forward_backward(kernel, inputs, grad) for kernel in kernels.values()]
        difference = max((a - c).abs().max().item() for a, c in zip(*results, strict=True))
        times: dict[str, list[float]] = {name: [] for name in kernels}
        for _ in range(args.repeat):  # alternating, so a noisy machine hurts both alike
            for name, kernel in kernels.items():
                start = time.perf_counter()
                forward_backward(kernel, inputs, grad)
                times[name].append(time.perf_counter() - start)
        flash_ms, blocked_ms = (statistics.median(times[name]) * 1e3 for name in ("flash", "blocked"))
        taken = applies(*inputs, dropout_p=0.0)
        print(
            f"{str((b, h, n, d)):>18} {flash_ms:9.2f} {blocked_ms:11.2f} {flash_ms / blocked_ms:5.2f}x "
            f"{difference:9.1e}  {'yes' if taken else 'no'}"
        )


if __name__ == "__main__":
    main()
