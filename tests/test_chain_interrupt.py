"""SIGKILL `xtf migrate` at random moments: never a partial output, never a changed source."""

import hashlib
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open

import xtf_core
from xtf_core.checkpoint.atomic import is_temp_leftover
from xtf_core.checkpoint.header import read_header
from xtf_core.testing import rename_step_source, write_checkpoint, write_steps_package

SPEC = {"class": "TransformerWrapper", "num_tokens": 8, "attn_layers": {"class": "Decoder", "dim": 4}}
SCALE_STEP = '''"""Scale the big tensors by two (forces a decode of a few MB)."""

from xtf_core.chain import ValueTransform

revision = "xtf==0.1.0"
down_revision = "xtf==0.0.5"
reversible = True

ops = [ValueTransform("big.*", lambda t: t * 2, lambda t: t / 2)]
'''


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def setup(tmp_path):
    root = tmp_path / "steps"
    write_steps_package(
        root, "interrupt_rename", {"s1": rename_step_source("xtf==0.1.0", "xtf==0.0.1", "layer.*", "block.*")}
    )
    write_steps_package(
        root,
        "interrupt_scale",
        {"s1": rename_step_source("xtf==0.0.5", "xtf==0.0.1", "layer.*", "block.*"), "s2": SCALE_STEP},
    )
    generator = torch.Generator().manual_seed(0)
    tensors = {f"layer.{i}": torch.randn(128, 256, generator=generator) for i in range(120)}  # 15 MiB
    tensors.update({f"big.{i}": torch.randn(1024, 1024, generator=generator) for i in range(3)})  # 12 MiB
    source = tmp_path / "work" / "model.safetensors"
    source.parent.mkdir()
    write_checkpoint(source, tensors, "xtf==0.0.1", SPEC)
    env = {**os.environ, "PYTHONPATH": str(root)}
    return source, env


def timed_full_run(args, env):
    started = time.monotonic()
    process = launch(args, env)
    assert process.wait(timeout=60) == 0, process.stderr.read()
    return time.monotonic() - started


def launch(args, env):
    script = "import sys; from xtf_cli.cli import main; main(sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env, stderr=subprocess.PIPE)


def assert_complete_migrated(path):
    header = read_header(path)
    assert header.metadata["xtf.version"] == xtf_core.__version__  # migrated to the installed release
    with safe_open(str(path), "pt") as handle:
        assert len(list(handle.keys())) == 123
        handle.get_tensor("big.2")


def test_sigkill_never_leaves_partial_output_or_touches_source(setup):
    """A rename and a decoding step: kills land in start-up, planning, raw copies, decoding and renaming."""
    source, env = setup
    env["XTF_MIGRATIONS_PACKAGE"] = "interrupt_scale"
    digest = sha256(source)
    out = source.with_name("out.safetensors")
    duration = timed_full_run(["migrate", source, "-o", out], env)
    assert_complete_migrated(out)
    out.unlink()
    rng = random.Random(1234)
    for attempt in range(3):
        process = launch(["migrate", source, "-o", out], env)
        time.sleep(rng.uniform(0.05, duration))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        assert sha256(source) == digest, f"attempt {attempt}: source changed"
        if out.exists():  # the run finished before the kill: the output must be whole
            assert_complete_migrated(out)
            out.unlink()
        for leftover in source.parent.iterdir():
            if leftover not in (source, out):
                assert is_temp_leftover(leftover), leftover
                assert leftover.name.startswith(".out.safetensors.xtf-tmp-")
                leftover.unlink()


def test_sigkill_during_in_place_keeps_original_or_complete_file(setup):
    """Kills land before, during and after the backup and the write."""
    source, env = setup
    env["XTF_MIGRATIONS_PACKAGE"] = "interrupt_rename"
    original = source.read_bytes()
    backup = source.with_name("model.safetensors.bak")
    scratch = source.with_name("scratch.safetensors")
    duration = timed_full_run(["migrate", source, "-o", scratch], env)
    assert_complete_migrated(scratch)
    scratch.unlink()
    rng = random.Random(99)
    for attempt in range(6):
        process = launch(["migrate", source, "--in-place"], env)
        time.sleep(rng.uniform(0.02, duration))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        if backup.exists():
            assert backup.read_bytes() == original, f"attempt {attempt}: backup differs from the original"
        if source.read_bytes() != original:
            assert_complete_migrated(source)
            source.write_bytes(original)
        backup.unlink(missing_ok=True)
        for leftover in source.parent.iterdir():
            if leftover != source:
                assert is_temp_leftover(leftover), leftover
                leftover.unlink()
