"""Time `xtf_core.load` against the floor, in the same run: `safetensors.torch.load_file` + build on the
meta device + `load_state_dict(assign=True)`.

    python benchmarks/bench_load.py                       # CPU, ~260 MB float32 file
    python benchmarks/bench_load.py --device cuda         # straight to the GPU, ~3 GB file
    python benchmarks/bench_load.py --size-mb 64 --repeat 3

Variants, each timed `--repeat` times after one warm-up, interleaved (so a noisy machine hurts them
alike), the page cache warm: the floor; `xtf_core.load` without a lockfile; `xtf_core.load` with a lockfile
that names the file (the digest is computed while the file is read); and `sha256` of the file alone (what
"one more read of the file" costs). Ratios are floor / variant (above 1: faster than the floor).
Every loaded model is checked against the floor's once (same names, same values).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import torch


def spec_for(size_mb: int, cuda: bool) -> dict:
    """A decoder whose float32 weights take about `size_mb` MB (dim grows with size, depth fills it)."""
    dim = 2048 if cuda or size_mb >= 1500 else 512
    heads = dim // 64  # 64 features a head, so attention is 4 d^2
    per_layer = 12 * dim * dim + 13 * dim  # attention 4 d^2, feedforward 8 d^2, biases and norms
    num_tokens = 8192
    embeddings = 2 * num_tokens * dim
    depth = max(1, round((size_mb * 1e6 / 4 - embeddings) / per_layer))
    return {
        "class": "TransformerWrapper",
        "num_tokens": num_tokens,
        "max_seq_len": 1024,
        "attn_layers": {
            "class": "Decoder",
            "dim": dim,
            "depth": depth,
            "heads": heads,
            "rotary_pos_emb": True,
        },
    }


def write_checkpoint(path: Path, spec: dict) -> None:
    """A stamped checkpoint of random weights (built on meta, filled in place: no slow init)."""
    import xtf_core
    from xtf_core.spec import build

    with torch.device("meta"):
        model = build(spec)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.normal_(0, 0.02, generator=generator)
    xtf_core.save(model, path, fingerprint=False)


def floor_load(path: Path, spec: dict, device: str) -> torch.nn.Module:
    from safetensors.torch import load_file

    from xtf_core.spec import build

    tensors = load_file(str(path), device=device)
    with torch.device("meta"):
        model = build(spec)
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check_same(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    ours, theirs = model.state_dict(), reference.state_dict()
    assert sorted(ours) == sorted(theirs), "loaded names differ from the floor's"
    for name, tensor in theirs.items():
        assert ours[name].device == tensor.device, f"{name}: on {ours[name].device}, floor {tensor.device}"
        assert torch.equal(ours[name], tensor), f"{name}: values differ from the floor's"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size-mb", type=int, default=None, help="default: 260 on cpu, 3000 on cuda")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    device = args.device
    cuda = device.startswith("cuda")
    size_mb = args.size_mb or (3000 if cuda else 260)

    import xtf_core
    from xtf_core.lockfile.verbs import lock_checkpoints

    with tempfile.TemporaryDirectory(prefix="xtf-bench-load-") as temp:
        folder = Path(temp)
        path = folder / "model.safetensors"
        spec = spec_for(size_mb, cuda)
        started = time.perf_counter()
        write_checkpoint(path, spec)
        print(
            f"checkpoint: {path.stat().st_size / 1e6:.0f} MB float32 (dim {spec['attn_layers']['dim']}, "
            f"depth {spec['attn_layers']['depth']}), written in {time.perf_counter() - started:.1f} s; "
            f"device {device}; torch {torch.__version__}"
        )
        lock_path = folder / "xtf.lock"
        lock_checkpoints(lock_path, [path])

        def sha256_only() -> None:
            digest = hashlib.sha256()
            with open(path, "rb", buffering=0) as handle:
                while chunk := handle.read(16 * 2**20):
                    digest.update(chunk)

        variants = {
            "floor (load_file + meta + assign)": lambda: floor_load(path, spec, device),
            "xtf_core.load": lambda: xtf_core.load(path, lock=False, device=device),
            "xtf_core.load, locked": lambda: xtf_core.load(path, lock=lock_path, device=device),
            "sha256 of the file alone": sha256_only,
        }
        reference = floor_load(path, spec, device)
        check_same(xtf_core.load(path, lock=False, device=device), reference)
        check_same(xtf_core.load(path, lock=lock_path, device=device), reference)
        del reference
        times: dict[str, list[float]] = {name: [] for name in variants}
        for run in variants.values():  # warm-up: page cache, allocator, imports
            run()
        for _ in range(args.repeat):
            for name, run in variants.items():
                gc.collect()
                sync(device)
                start = time.perf_counter()
                result = run()
                sync(device)
                times[name].append(time.perf_counter() - start)
                del result
        floor = statistics.median(times["floor (load_file + meta + assign)"])
        print(f"{'variant':36} {'min ms':>8} {'median ms':>10} {'floor/variant':>14}")
        for name, runs in times.items():
            median = statistics.median(runs)
            print(f"{name:36} {min(runs) * 1e3:8.1f} {median * 1e3:10.1f} {floor / median:13.2f}x")
        locked_extra = statistics.median(times["xtf_core.load, locked"]) - floor
        read_once = statistics.median(times["sha256 of the file alone"])
        print(
            f"locked load costs {locked_extra * 1e3:.1f} ms over the floor; one sha256 read of the file "
            f"costs {read_once * 1e3:.1f} ms (target: at most that)"
        )
        print("targets: xtf_core.load >= 0.9x the floor")


if __name__ == "__main__":
    main()
