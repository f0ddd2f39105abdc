"""`xtf.lock` pins the installed chain: an edited step or one inserted below locked steps fails `--check`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import xtf_core
from xtf_core.lockfile.format import tomllib  # tomllib, or tomli before Python 3.11
from xtf_core.testing import rename_step_source, write_steps_package

INSTALLED = f"xtf=={xtf_core.__version__}"


def _xtf(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xtf_cli.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A folder with its own steps package (0.0.1 -> 0.0.5 -> installed) named by XTF_MIGRATIONS_PACKAGE."""
    package = "lock_chain_steps"
    folder = write_steps_package(
        tmp_path / "steps",
        package,
        {
            "s1": rename_step_source("xtf==0.0.5", "xtf==0.0.1", "a.*", "b.*"),
            "s2": rename_step_source(INSTALLED, "xtf==0.0.5", "b.*", "c.*"),
        },
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path / "steps"),
        "XTF_MIGRATIONS_PACKAGE": package,
        "XTF_LOCK": str(tmp_path / "xtf.lock"),
    }
    monkeypatch.chdir(tmp_path)
    done = _xtf("lock", env=env)
    assert done.returncode == 0, done.stderr
    return folder, env, tmp_path / "xtf.lock"


def test_the_lockfile_records_every_step_and_a_sum(project) -> None:
    _, env, lockfile = project
    chain = tomllib.loads(lockfile.read_text())["chain"]
    assert [step for step, _ in chain["steps"]] == ["xtf==0.0.5", INSTALLED]
    assert chain["sum"].startswith("sha256:")
    assert _xtf("lock", "--check", env=env).returncode == 0


def test_an_edited_step_fails_the_check_naming_it(project) -> None:
    folder, env, _ = project
    step = folder / "s1.py"
    step.write_text(step.read_text() + "\n# changed after release\n")
    done = _xtf("lock", "--check", env=env)
    assert done.returncode == 1
    assert "step xtf==0.0.5 was edited after it was locked" in done.stdout + done.stderr


def test_a_step_inserted_below_locked_steps_fails_the_check(project) -> None:
    folder, env, _ = project
    (folder / "s0.py").write_text(rename_step_source("xtf==0.0.3", "xtf==0.0.1", "z.*", "y.*"))
    (folder / "s1.py").write_text(rename_step_source("xtf==0.0.5", "xtf==0.0.3", "a.*", "b.*"))
    done = _xtf("lock", "--check", env=env)
    assert done.returncode == 1
    assert "step xtf==0.0.3 was inserted out of order" in done.stdout + done.stderr


def test_an_edited_sum_is_refused(project) -> None:
    _, env, lockfile = project
    text = lockfile.read_text()
    lockfile.write_text(text.replace('sum = "sha256:', 'sum = "sha256:0', 1))
    done = _xtf("lock", "--check", env=env)
    assert done.returncode == 1 and "[chain] sum does not match its steps" in done.stderr
    assert done.stderr.startswith("error:") and done.stderr.count("\n") == 1
