"""Usage errors follow the one-line contract: `error: ...` on stderr, exit status 2, no click usage block.

Every case runs as a real process, against a real checkpoint that must come out untouched, with an output
path that must not appear. Errors that are not about usage (a missing file) keep exit status 1.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xtf_core.testing import write_checkpoint

XTF = [sys.executable, "-m", "xtf_cli.cli"]
TIMEOUT = 60
SPEC = {"class": "TransformerWrapper", "num_tokens": 8, "attn_layers": {"class": "Decoder", "dim": 4}}

# (arguments with CKPT/OUT placeholders, a fragment the one line must contain)
USAGE_ERRORS = {
    "migrate without -o": (["migrate", "CKPT"], "-o OUT or --in-place"),
    "migrate -o and --in-place": (["migrate", "CKPT", "-o", "OUT", "--in-place"], "-o OUT or --in-place"),
    "unknown option": (["migrate", "CKPT", "-o", "OUT", "--bogus"], "--bogus"),
    "unknown verb": (["frobnicate", "CKPT"], "frobnicate"),
    "missing argument": (["inspect"], "CKPT"),
    "extra argument": (["verify", "CKPT", "CKPT"], "unexpected extra argument"),
    "value for a flag": (["migrate", "CKPT", "-o", "OUT", "--dry-run=yes"], "--dry-run"),
    "option without its value": (["migrate", "CKPT", "-o"], "-o"),
    "empty --to": (["migrate", "CKPT", "-o", "OUT", "--to", ""], "--to"),
    "blank --to": (["migrate", "CKPT", "-o", "OUT", "--to", "  "], "--to"),
    "--to without a version": (["migrate", "CKPT", "-o", "OUT", "--to", "x-transformers=="], "--to"),
    "--to not a version": (["migrate", "CKPT", "-o", "OUT", "--to", "latest"], "PEP 440"),
    "--to unknown lineage": (["migrate", "CKPT", "-o", "OUT", "--to", "keras==1.0"], "unknown lineage"),
    "empty -o": (["migrate", "CKPT", "-o", ""], "-o"),
    "--to and --to-lock": (["migrate", "CKPT", "-o", "OUT", "--to", "0.1.0", "--to-lock"], "not both"),
    "--lockfile alone": (["migrate", "CKPT", "-o", "OUT", "--lockfile", "x.lock"], "--to-lock"),
    "convert without --from or --to": (["convert", "CKPT", "-o", "OUT"], "--from"),
    "convert without -o": (["convert", "CKPT", "--to", "x-transformers==1.26.0"], "-o"),
    "convert --from without --config": (
        ["convert", "CKPT", "--from", "x-transformers", "-o", "OUT"],
        "--config",
    ),
    "convert empty --to": (["convert", "CKPT", "--to", "", "-o", "OUT"], "--to"),
    "convert empty --from": (["convert", "CKPT", "--from", "", "-o", "OUT"], "--from"),
    "convert --to without a release": (["convert", "CKPT", "--to", "x-transformers", "-o", "OUT"], "release"),
    "consolidate without -o": (["consolidate", "CKPT"], "-o"),
    "lock --check with files": (["lock", "--check", "CKPT"], "--check"),
    "lock empty --pin": (["lock", "CKPT", "--pin", ""], "--pin"),
}


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    write_checkpoint(path, {"a.weight": torch.ones(2, 2)}, "xtf==0.1.0", SPEC)
    return path


def _digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*XTF, *args], capture_output=True, text=True, cwd=cwd, timeout=TIMEOUT)


def _assert_one_line(proc: subprocess.CompletedProcess, status: int, fragment: str) -> str:
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "Usage:" not in proc.stderr + proc.stdout
    assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_usage_error_is_one_line_with_status_2(case, ckpt, tmp_path):
    template, fragment = USAGE_ERRORS[case]
    out = tmp_path / "out.safetensors"
    args = [str(ckpt) if a == "CKPT" else str(out) if a == "OUT" else a for a in template]
    before = _digest(ckpt)
    listing = sorted(p.name for p in tmp_path.iterdir())
    line = _assert_one_line(_run(args, tmp_path), 2, fragment)
    assert "--help" in line  # says where the usage is, instead of printing it
    assert _digest(ckpt) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no output, no backup, no lockfile


def test_a_missing_file_is_an_error_not_a_usage_error(tmp_path):
    _assert_one_line(_run(["inspect", str(tmp_path / "missing.safetensors")], tmp_path), 1, "missing")


def test_a_well_formed_but_unknown_target_is_an_error(ckpt, tmp_path):
    out = tmp_path / "out.safetensors"
    _assert_one_line(_run(["migrate", str(ckpt), "-o", str(out), "--to", "7.0.0"], tmp_path), 1, "7.0.0")
    assert not out.exists()


def test_help_and_no_arguments_print_usage_on_stdout_with_status_0(tmp_path):
    for args in (["--help"], [], ["migrate", "--help"]):
        proc = _run(args, tmp_path)
        assert proc.returncode == 0 and proc.stderr == "" and "Usage:" in proc.stdout, args
