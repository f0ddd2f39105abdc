"""Benchmark a rename-only `xtf migrate` against `cp` and a naive load/rename/save, on a ~1 GB checkpoint.

Targets: wall time <= 1.5x `cp`; peak RSS <= largest tensor + 250 MiB. Each variant runs in its own
process; peak RSS is that child's ru_maxrss (os.wait4). Everything lives in a temporary folder that is
deleted at the end.

    python benchmarks/bench_migrate.py [--size-mb 1024] [--repeat 2] [--keep-going]

`xtf migrate` fsyncs its output before renaming it into place (that is what makes it safe to kill), so it
is also compared with `cp` followed by `sync` of the copy. The "+decode" variant adds a step that
rewrites the two 100 MB tensors, to show the decode path's peak. Recorded figures: docs/migrations.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIG_TENSOR_MB = 100
SMALL_TENSOR_MB = 2
MIGRATE = "import sys; from xtf_cli.cli import main; main(sys.argv[1:])"
NAIVE = """
import sys
from safetensors import safe_open
from safetensors.torch import load_file, save_file
with safe_open(sys.argv[1], "pt") as handle:
    metadata = handle.metadata()
tensors = load_file(sys.argv[1])
renamed = {name.replace("layers.", "blocks.", 1): tensor for name, tensor in tensors.items()}
save_file(renamed, sys.argv[2], metadata)
"""
DECODE_STEP = '''"""Scale the two big tensors (a decoding step, to measure the decode path's peak memory)."""

from xtf_core.chain import ValueTransform

revision = "xtf==0.1.0"
down_revision = "xtf==0.0.5"
reversible = True

ops = [ValueTransform("big.*", lambda t: t * 2, lambda t: t / 2)]
'''
BUILD = """
import sys
import torch
from xtf_core.testing import write_checkpoint
size_mb, big_mb, small_mb = (int(arg) for arg in sys.argv[2:5])
tensors = {}
for i in range(2):
    tensors[f"big.{i}"] = torch.randn(big_mb * 2**20 // 4)  # float32
rest = size_mb - 2 * big_mb
for i in range(max(rest // small_mb, 1)):
    dtype = torch.bfloat16 if i % 3 == 0 else torch.float32
    elements = small_mb * 2**20 // (2 if dtype == torch.bfloat16 else 4)
    tensors[f"layers.{i}.weight"] = torch.randn(elements).to(dtype).reshape(-1, 256)
spec = {"class": "TransformerWrapper", "num_tokens": 256, "attn_layers": {"class": "Decoder", "dim": 256}}
write_checkpoint(sys.argv[1], tensors, "xtf==0.0.1", spec)
"""


def run_measured(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes of one child process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"benchmark command failed ({process.returncode}): {' '.join(command[:4])} ...")
    return wall, usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant; the fastest is reported")
    args = parser.parse_args()

    from xtf_core.checkpoint.header import read_header
    from xtf_core.testing import rename_step_source, write_steps_package

    rename = rename_step_source("xtf==0.1.0", "xtf==0.0.1", "layers.*.weight", "blocks.*.weight")
    rename_then_decode = {
        "s001": rename_step_source("xtf==0.0.5", "xtf==0.0.1", "layers.*.weight", "blocks.*.weight"),
        "s002": DECODE_STEP,
    }
    with tempfile.TemporaryDirectory(prefix="xtf-bench-") as temp:
        root = Path(temp)
        write_steps_package(root / "steps", "bench_rename", {"s001": rename})
        write_steps_package(root / "steps", "bench_decode", rename_then_decode)
        env = {**os.environ, "PYTHONPATH": str(root / "steps"), "XTF_MIGRATIONS_PACKAGE": "bench_rename"}
        decode_env = {**env, "XTF_MIGRATIONS_PACKAGE": "bench_decode"}
        source = root / "model.safetensors"
        sizes = [str(args.size_mb), str(BIG_TENSOR_MB), str(SMALL_TENSOR_MB)]
        subprocess.run([sys.executable, "-c", BUILD, str(source), *sizes], env=env, check=True)
        header = read_header(source)
        largest = max(entry.nbytes for entry in header.tensors.values())
        count = len(header.tensors)
        print(
            f"checkpoint: {header.file_size / 2**20:.0f} MiB, {count} tensors, largest {largest / 2**20:.0f} MiB"
        )

        migrate = [sys.executable, "-c", MIGRATE, "migrate", str(source), "-o"]
        variants = {
            "cp": (["cp", str(source)], env),
            "cp + fsync": (["sh", "-c", 'cp "$0" "$1" && sync "$1"', str(source)], env),
            "xtf migrate (rename)": (migrate, env),
            "naive load/save": ([sys.executable, "-c", NAIVE, str(source)], env),
            "xtf migrate (+decode)": (migrate, decode_env),
        }
        subprocess.run(["cat", str(source)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        results = {}
        for name, (command, variant_env) in variants.items():
            runs = []
            for attempt in range(args.repeat):
                out = root / f"out-{attempt}.safetensors"
                os.sync()
                runs.append(run_measured([*command, str(out)], variant_env))
                out.unlink()
            results[name] = min(runs)

        cp_wall, synced_wall = results["cp"][0], results["cp + fsync"][0]
        budget = largest + 250 * 2**20
        print(f"{'variant':<24}{'wall s':>8}{'x cp':>7}{'x cp+fsync':>12}{'peak MiB':>10}{'x budget':>10}")
        for name, (wall, peak) in results.items():
            print(
                f"{name:<24}{wall:>8.2f}{wall / cp_wall:>7.2f}{wall / synced_wall:>12.2f}"
                f"{peak / 2**20:>10.0f}{peak / budget:>10.2f}"
            )
        wall, peak = results["xtf migrate (rename)"]
        print(f"wall target (<= 1.5x cp): {wall / cp_wall:.2f}x cp, {wall / synced_wall:.2f}x cp + fsync")
        print(f"peak target (<= {budget / 2**20:.0f} MiB): rename {peak / 2**20:.0f} MiB, ", end="")
        print(f"with decode {results['xtf migrate (+decode)'][1] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
