"""Time `xtf inspect` on a ~1 GiB stamped checkpoint (header only, no torch), against a bare interpreter.

The ratio to `python -c pass` is measured in the same run. An editable install adds its import finder to
every interpreter start (about 15-35 ms here), which a normal install does not have.

    python benchmarks/bench_inspect.py [--size-mb 1024] [--repeat 15]

The file is sparse (its data region is a hole), which is exactly what inspect must never read.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xtf_core.checkpoint.header import encode_header
from xtf_core.checkpoint.stamp import current_stamp, stamped_metadata

SPEC = {
    "class": "TransformerWrapper",
    "num_tokens": 32000,
    "max_seq_len": 2048,
    "attn_layers": {"class": "Decoder", "dim": 1024, "depth": 24},
}


def build(path: Path, size_mb: int, tensors: int = 400) -> None:
    per = size_mb * 2**20 // tensors // 4
    entries = [(f"layers.{i}.weight", "F32", (per,)) for i in range(tensors)]
    header = encode_header(entries, stamped_metadata({}, current_stamp(), SPEC))
    with open(path, "wb") as handle:
        handle.write(header)
        handle.truncate(len(header) + per * 4 * tensors)


def timed(command: list[str], repeat: int, warm: bool = True) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if warm:
        subprocess.run(command, stdout=subprocess.DEVNULL, env=env, check=True)  # warm caches and bytecode
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, env=env, check=True)
        runs.append(time.perf_counter() - start)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument(
        "--device", default="cpu", help="accepted for a uniform interface: inspect reads headers only"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xtf-bench-") as temp:
        path = Path(temp) / "model.safetensors"
        build(path, args.size_mb)
        # the installed console script, as a user runs it (its shebang is this interpreter)
        script = Path(sys.executable).parent / "xtf"
        xtf = [sys.executable, str(script)] if script.is_file() else [sys.executable, "-m", "xtf_cli.entry"]
        variants = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "xtf inspect": [*xtf, "inspect", str(path)],
            "xtf inspect --json": [*xtf, "inspect", "--json", str(path)],
        }
        print(f"checkpoint: {path.stat().st_size / 2**20:.0f} MiB (sparse), 400 tensors")
        times = {name: [] for name in variants}
        for command in variants.values():  # warm caches and bytecode
            timed(command, 0)
        for _ in range(args.repeat):  # interleaved, so a noisy machine hurts every variant alike
            for name, command in variants.items():
                times[name] += timed(command, 1, warm=False)
        bare = statistics.median(times["python -c pass"])
        print(f"{'variant':22} {'min ms':>8} {'median ms':>10} {'x bare':>8}")
        for name, runs in times.items():
            median = statistics.median(runs)
            print(f"{name:22} {min(runs) * 1000:8.0f} {median * 1000:10.0f} {median / bare:7.2f}x")
        print("target: xtf inspect <= 2x a bare interpreter (median)")


if __name__ == "__main__":
    main()
