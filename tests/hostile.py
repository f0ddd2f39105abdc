"""Shared helpers for the hostile-input tests (tests/test_hostile_*.py, tests/test_mixed_stamps.py).

Every bad input must be refused cleanly: through the CLI (a real `xtf` process, with a timeout) a non-zero
exit status, exactly one line on stderr starting `error:`, no traceback, no output file (nor a temporary)
left, the source unchanged, all within a time bound; through `xtf_core.load` the right `XtfError` subclass,
within the same bound.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
XTF = REPO / ".venv" / "bin" / "xtf"
TIME_LIMIT_S = 60.0  # generous for a loaded 2-core machine; a hang is what this catches
SPEC = {
    "class": "TransformerWrapper",
    "num_tokens": 16,
    "max_seq_len": 8,
    "attn_layers": {"class": "Decoder", "dim": 8, "depth": 1, "heads": 2},
}


def xtf_command() -> list[str]:
    if XTF.exists():
        return [str(XTF)]
    return [sys.executable, "-m", "xtf_cli.cli"]


def good_checkpoint(folder: Path, name: str = "good.safetensors") -> Path:
    """A real, loadable stamped checkpoint of a tiny model (saved by xtf_core.save, with fingerprint)."""
    import torch

    import xtf_core

    torch.manual_seed(0)
    path = folder / name
    xtf_core.save(xtf_core.build(SPEC), path)
    return path


def split_file(raw: bytes) -> tuple[dict, bytes]:
    """(header document, data region) of a safetensors file's bytes."""
    (size,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + size]), raw[8 + size :]


def join_file(header: dict | str | bytes, data: bytes, size_delta: int = 0) -> bytes:
    """A safetensors file from a header (a document, or its exact JSON text) and a data region;
    `size_delta` makes the stored header length lie by that many bytes."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    raw = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(raw) + size_delta) + raw + data


def file_digest(path: Path) -> str:
    """sha256 over a file, or over every file of a folder (names and bytes); special files by name only."""
    digest = hashlib.sha256()
    paths = sorted(path.iterdir()) if path.is_dir() else [path]
    for item in paths:
        digest.update(item.name.encode() + b"\0")
        if item.is_file():
            digest.update(item.read_bytes())
    return digest.hexdigest()


def run_xtf(*args: object, timeout: float = TIME_LIMIT_S) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    try:
        result = subprocess.run(
            [*xtf_command(), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"xtf {' '.join(map(str, args))} did not finish within {timeout} s (a hang)")
    return result, time.monotonic() - start


def assert_cli_refuses(
    *args: object, source: Path, output: Path | None = None, match: str | None = None
) -> str:
    """Run `xtf ARGS` on a bad `source` and check the one-line refusal contract; returns the error line."""
    before = file_digest(source) if source.exists() else None
    folder = output.parent if output is not None else (source if source.is_dir() else source.parent)
    leftovers_before = set(folder.iterdir())
    result, elapsed = run_xtf(*args)
    verb = " ".join(map(str, args))
    assert result.returncode != 0, f"xtf {verb} exited 0 on bad input:\n{result.stdout}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"xtf {verb}: expected one stderr line, got:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines[0]) < 1500, f"unbounded error message ({len(lines[0])} characters)"
    if output is not None:
        assert not output.exists(), f"xtf {verb} left {output}"
    new = set(folder.iterdir()) - leftovers_before
    assert not new, f"xtf {verb} left {sorted(p.name for p in new)}"
    if before is not None:
        assert file_digest(source) == before, f"xtf {verb} changed {source}"
    assert elapsed < TIME_LIMIT_S
    if match is not None:
        assert match in lines[0], lines[0]
    return lines[0]


def assert_load_refuses(path: Path, error: type[Exception], match: str | None = None) -> Exception:
    """`xtf_core.load(path)` raises `error` within the time bound and leaves the source unchanged."""
    import xtf_core

    before = file_digest(path) if path.exists() else None
    start = time.monotonic()
    with time_limit(TIME_LIMIT_S), pytest.raises(error) as info:
        xtf_core.load(path)
    assert time.monotonic() - start < TIME_LIMIT_S
    message = str(info.value)
    assert "\n" not in message and len(message) < 1500, message[:300]
    if before is not None:
        assert file_digest(path) == before
    if match is not None:
        assert match in message, message
    return info.value


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the body runs longer than `seconds` (main thread, POSIX)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"did not finish within {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def refusal_verbs(path: Path, out: Path) -> list[tuple[tuple[object, ...], Path | None]]:
    """The header-reading verbs every bad checkpoint goes through: (args, output it must not leave)."""
    return [
        (("inspect", path), None),
        (("inspect", "--json", path), None),
        (("migrate", path, "-o", out), out),
    ]


def run_all_refusals(path: Path, tmp: Path, match: str | None = None, verify: bool = False) -> None:
    out = tmp / "out.safetensors"
    for args, output in refusal_verbs(path, out):
        assert_cli_refuses(*args, source=path, output=output, match=match)
    if verify:
        assert_cli_refuses("verify", path, source=path, match=match)


def sharded_folder(folder: Path, good: Path, shard_metadata: list[dict] | None = None) -> dict[str, str]:
    """A real two-shard folder holding the tensors of checkpoint `good`: the index and both shards carry
    its metadata, unless `shard_metadata` gives each shard's own. Returns the weight map."""
    from safetensors.torch import load_file, save_file

    document, _ = split_file(good.read_bytes())
    metadata = document["__metadata__"]
    tensors = load_file(str(good))
    names = sorted(tensors)
    weight_map: dict[str, str] = {}
    for number, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), start=1):
        shard = f"model-{number:05d}-of-00002.safetensors"
        own = shard_metadata[number - 1] if shard_metadata is not None else metadata
        save_file({n: tensors[n].contiguous() for n in part}, str(folder / shard), own)
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {**metadata, "total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return weight_map


def ensure_posix() -> None:
    if os.name != "posix":
        pytest.skip("POSIX special files")
