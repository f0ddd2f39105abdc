"""Peak RSS per rank when 2 ranks load a ~1 GB stamped checkpoint into an FSDP2-sharded model (gloo, CPU),
against one process loading it whole with `xtf_core.load`.

Target: per-rank peak, above the imports and process group, <= half the model + largest tensor + 300 MiB. Each rank reports its own peak (VmHWM);
the single-process figure comes from a child process (os.wait4). The checkpoint lives in a temporary
folder that is deleted at the end.

    python benchmarks/bench_distributed.py [--dim 1024] [--depth 20] [--legacy]

`--legacy` stamps the file as x-transformers 1.26.0 with rotary embeddings, so the load crosses the 1.30.1
row permutation: those tensors are computed whole, one at a time, and each rank keeps its slice.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

MIB = 2**20


def _spec(dim: int, depth: int, rotary: bool = False) -> dict:
    layers = {"class": "Decoder", "dim": dim, "depth": depth, "heads": dim // 64}
    return {
        "class": "TransformerWrapper",
        "num_tokens": 8192,
        "max_seq_len": 512,
        "attn_layers": {**layers, "rotary_pos_emb": True} if rotary else layers,
    }


def _peak_mib() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not inherit the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rank(rank: int, world: int, port: int, path: str, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import xtf_core
    import xtf_core.distributed as xd

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=300))
    baseline = _peak_mib()
    spec = xd.plan_load(path).spec  # the spec after migration to the installed xtf
    with torch.device("meta"):
        model = xtf_core.build(spec)
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.attn_layers.layers:
        fully_shard(layer[1], mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device="cpu")
    before = _peak_mib()
    started = time.perf_counter()
    xd.load(path, model)
    seconds = time.perf_counter() - started
    dist.barrier()
    Path(out, f"rank{rank}.json").write_text(
        json.dumps(
            {"peak_mib": _peak_mib(), "baseline_mib": baseline, "before_mib": before, "seconds": seconds}
        )
    )
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _single(path: Path) -> tuple[float, float]:
    code = (
        "import sys, time, xtf_core; t = time.perf_counter(); xtf_core.load(sys.argv[1]); "
        "print(time.perf_counter() - t)"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status:
        raise SystemExit(f"single-process load failed ({status})")
    return usage.ru_maxrss / 1024, float(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument(
        "--legacy", action="store_true", help="a 1.26.0 rotary file (row permutation on load)"
    )
    args = parser.parse_args()

    import torch.multiprocessing as mp

    from xtf_core.checkpoint.header import read_checkpoint_headers

    with tempfile.TemporaryDirectory(prefix="xtf-bench-dist-") as tmp:
        path = Path(tmp) / "model.safetensors"
        build = (
            "import json, sys, torch, xtf_core; torch.manual_seed(0); "
            "xtf_core.save(xtf_core.build(json.loads(sys.argv[1])), sys.argv[2], fingerprint=False)"
        )
        spec = json.dumps(_spec(args.dim, args.depth, rotary=args.legacy))
        subprocess.run([sys.executable, "-c", build, spec, str(path)], check=True)
        if args.legacy:
            current = path.with_name("current.safetensors")
            path.rename(current)
            subprocess.run(
                [sys.executable, "-m", "xtf_cli.cli", "migrate", str(current), "-o", str(path)]
                + ["--to", "x-transformers==1.26.0"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            current.unlink()
        headers = read_checkpoint_headers(path)
        total = headers.data_bytes / MIB
        largest = max(entry.nbytes for _, entry in headers.entries()) / MIB
        single_peak, single_s = _single(path)
        world = 2
        mp.spawn(_rank, args=(world, _free_port(), str(path), tmp), nprocs=world)
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    target = total / 2 + largest + 300
    kind = "x-transformers 1.26.0 rotary, migrated on load" if args.legacy else "current"
    print(
        f"checkpoint ({kind}): {total:.0f} MiB ({len(list(headers.entries()))} tensors, largest {largest:.0f} MiB)"
    )
    print(f"one process, xtf_core.load:  peak RSS {single_peak:.0f} MiB, {single_s:.1f} s")
    for rank, figures in enumerate(ranks):
        print(
            f"rank {rank}/{world}, distributed.load: peak RSS {figures['peak_mib']:.0f} MiB "
            f"(imports + process group {figures['baseline_mib']:.0f} MiB, + sharded model {figures['before_mib']:.0f} MiB), {figures['seconds']:.1f} s"
        )
    # what the load itself costs a rank: its peak above the imports and the process group
    worst = max(figures["peak_mib"] - figures["baseline_mib"] for figures in ranks)
    verdict = "meets" if worst <= target else "MISSES"
    print(
        f"target per rank: peak - (imports + process group) <= model/2 + largest + 300 MiB = {target:.0f} MiB; "
        f"worst rank {worst:.0f} MiB: {verdict}"
    )


if __name__ == "__main__":
    main()
