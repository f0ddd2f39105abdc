"""The lockfile from Python: what `xtf lock` and `xtf lock --check` run, without the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

import xtf_core
from xtf_cli.cli import main
from xtf_core.errors import LockError
from xtf_core.lockfile.format import Lockfile
from xtf_core.lockfile.verbs import check_lockfile, lock_checkpoints

SPEC = {
    "class": "TransformerWrapper",
    "num_tokens": 16,
    "max_seq_len": 8,
    "attn_layers": {"class": "Decoder", "dim": 8, "depth": 1, "heads": 2},
}


def test_lock_then_check_then_tamper(tmp_path: Path) -> None:
    ckpt = xtf_core.save(xtf_core.build(SPEC), tmp_path / "model.safetensors")
    lockfile_path = tmp_path / "xtf.lock"
    written, added, notes = lock_checkpoints(lockfile_path, [ckpt])
    assert [entry.path for entry in added] == ["model.safetensors"] and notes == []
    assert check_lockfile(Lockfile.read(lockfile_path)) == []
    data = bytearray(ckpt.read_bytes())
    data[-1] ^= 1
    ckpt.write_bytes(bytes(data))
    problems = check_lockfile(Lockfile.read(lockfile_path))
    assert len(problems) == 1 and problems[0].startswith("model.safetensors: sha256")
    with pytest.raises(LockError):
        xtf_core.load(ckpt, lock=lockfile_path)


def test_a_checkpoint_the_pin_excludes_is_refused_with_the_fix(tmp_path: Path) -> None:
    ckpt = xtf_core.save(xtf_core.build(SPEC), tmp_path / "model.safetensors")
    with pytest.raises(LockError) as refused:
        lock_checkpoints(tmp_path / "xtf.lock", [ckpt], "x-transformers==1.26.0")
    assert not (tmp_path / "xtf.lock").exists()
    fix = str(refused.value).split("fix: ")[1].split(", then")[0]
    assert fix == f"xtf migrate {ckpt} --to x-transformers==1.26.0 --in-place"
    # the suggested command works as written, and then the checkpoint locks
    assert main(fix.split()[1:], standalone_mode=False) is None
    lock_checkpoints(tmp_path / "xtf.lock", [ckpt], "x-transformers==1.26.0")
