"""xtf as a Unix tool: output into a closed pipe (`xtf ... | head -n 1`) ends quietly with exit status 0.

Each command runs as a real process (the interpreter's final flush is part of what is tested), with
PYTHONUNBUFFERED set and unset. Two ways to close the pipe: its reading end is closed before xtf starts
(the very first write fails), or `head -n 1` exits while xtf is still writing hundreds of KiB.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xtf_core.testing import rename_step_source, write_checkpoint, write_steps_package

XTF = [sys.executable, "-m", "xtf_cli.cli"]
TIMEOUT = 120  # seconds; a run that hangs on a closed pipe fails instead of blocking the suite
SPEC = {"class": "TransformerWrapper", "num_tokens": 8, "attn_layers": {"class": "Decoder", "dim": 4}}
TENSORS = 2000  # each is listed by `migrate --dry-run --json`: far more output than a pipe holds
PIPE_CAPACITY = 64 * 1024  # Linux default


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> dict:
    """A checkpoint of TENSORS tensors, one rename step away from the (synthetic) installed version."""
    root = tmp_path_factory.mktemp("unix")
    package = "unix_pipe_steps"
    write_steps_package(
        root / "steps", package, {"s001_rename": rename_step_source("xtf==0.1.0", "xtf==0.0.1", "a.*", "b.*")}
    )
    ckpt = root / "many.safetensors"
    write_checkpoint(ckpt, {f"a.{i}": torch.zeros(2) for i in range(TENSORS)}, "xtf==0.0.1", SPEC)
    env = {"PYTHONPATH": str(root / "steps"), "XTF_MIGRATIONS_PACKAGE": package}
    return {"root": root, "ckpt": ckpt, "out": root / "out.safetensors", "env": env}


def _env(extra: dict, unbuffered: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(extra)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    return env


def _commands(many: dict) -> dict[str, tuple[list[str], dict]]:
    ckpt, out = str(many["ckpt"]), str(many["out"])
    return {
        "history": (["history"], {}),
        "history-json": (["history", "--json"], {}),
        "help": (["--help"], {}),
        "inspect": (["inspect", ckpt], many["env"]),
        "inspect-json": (["inspect", ckpt, "--json"], many["env"]),
        "dry-run": (["migrate", ckpt, "-o", out, "--dry-run"], many["env"]),
        "dry-run-json": (["migrate", ckpt, "-o", out, "--dry-run", "--json"], many["env"]),
        "compat": (["compat"], {}),
    }


def _assert_quiet_success(proc: subprocess.CompletedProcess, many: dict) -> None:
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    assert not many["out"].exists()


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize(
    "name",
    ["history", "history-json", "help", "inspect", "inspect-json", "dry-run", "dry-run-json", "compat"],
)
def test_pipe_closed_before_the_first_write(many, name, unbuffered):
    args, extra = _commands(many)[name]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [*XTF, *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(extra, unbuffered),
            cwd=many["root"],
            timeout=TIMEOUT,
        )
    finally:
        os.close(write_end)
    _assert_quiet_success(proc, many)


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("name", ["history", "inspect", "dry-run", "dry-run-json"])
def test_head_closes_the_pipe_mid_write(many, name, unbuffered):
    """`set -o pipefail; xtf ... | head -n 1`, as scripts do: exit 0, one line out, nothing on stderr."""
    args, extra = _commands(many)[name]
    proc = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | head -n 1', "bash", *XTF, *args],
        capture_output=True,
        text=True,
        env=_env(extra, unbuffered),
        cwd=many["root"],
        timeout=TIMEOUT,
    )
    _assert_quiet_success(proc, many)
    assert len(proc.stdout.splitlines()) == 1


def test_the_json_plan_really_outgrows_the_pipe(many):
    """The mid-write case above is real: the whole output is several times what a pipe buffers."""
    args, extra = _commands(many)["dry-run-json"]
    proc = subprocess.run(
        [*XTF, *args],
        capture_output=True,
        text=True,
        env=_env(extra, False),
        cwd=many["root"],
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.encode()) > 4 * PIPE_CAPACITY
    assert proc.stdout.count('"b.') >= TENSORS


def test_an_error_still_reports_and_fails_through_a_pipe(many):
    """A closed pipe is not an error, but a real error is still one line and exit 1 under pipefail."""
    missing = Path(many["root"]) / "missing.safetensors"
    proc = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | head -n 1', "bash", *XTF, "inspect", str(missing)],
        capture_output=True,
        text=True,
        env=_env({}, False),
        cwd=many["root"],
        timeout=TIMEOUT,
    )
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
