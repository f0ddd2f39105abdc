"""The installed `xtf` command (`entry.py`): a plain `xtf inspect` is answered without click, and says
exactly what the click verb says, errors and exit statuses included; everything else goes to click."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import xtf_core
from xtf_core.testing import rename_step_source, write_checkpoint, write_steps_package

INSTALLED = f"xtf=={xtf_core.__version__}"
SPEC = {"class": "TransformerWrapper", "num_tokens": 8, "attn_layers": {"class": "Decoder", "dim": 4}}
ENTRY = [sys.executable, "-c", "from xtf_cli.entry import run; run()"]
CLICK = [sys.executable, "-m", "xtf_cli.cli"]
# prints the click modules imported when the command exits (it always exits through SystemExit)
WATCH = [
    sys.executable,
    "-c",
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write('click modules: %d\\n' % sum(m.split('.')[0] == 'click' "
    "for m in sys.modules)))\n"
    "from xtf_cli.entry import run\n"
    "run()",
]


@pytest.fixture
def env(tmp_path):
    """A steps package in which the installed release is two steps after xtf==0.0.1."""
    root = tmp_path / "steps"
    write_steps_package(
        root,
        "entry_steps",
        {
            "s001_rename": rename_step_source("xtf==0.0.5", "xtf==0.0.1", "a.*", "b.*"),
            "s002_rename": rename_step_source(INSTALLED, "xtf==0.0.5", "c", "d"),
        },
    )
    return {**os.environ, "PYTHONPATH": str(root), "XTF_MIGRATIONS_PACKAGE": "entry_steps"}


@pytest.fixture
def files(tmp_path):
    old = tmp_path / "old.safetensors"
    write_checkpoint(
        old, {"a.weight": torch.ones(2, 2), "c": torch.zeros(3, dtype=torch.bfloat16)}, "xtf==0.0.1", SPEC
    )
    newer = tmp_path / "newer.safetensors"
    write_checkpoint(newer, {"b.weight": torch.ones(2, 2)}, "xtf==99.0", SPEC)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(1)}, str(plain))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\xff" * 16)
    return {"old": old, "newer": newer, "plain": plain, "corrupt": corrupt, "missing": tmp_path / "nope"}


def run(command, args, env):
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("name", ["old", "newer", "plain", "corrupt", "missing"])
@pytest.mark.parametrize(
    "form", [("inspect", "{}"), ("inspect", "{}", "--json"), ("inspect", "--json", "{}")]
)
def test_fast_inspect_says_what_the_click_verb_says(env, files, name, form):
    args = [str(files[name]) if part == "{}" else part for part in form]
    fast, slow = run(ENTRY, args, env), run(CLICK, args, env)
    assert (fast.returncode, fast.stdout, fast.stderr) == (slow.returncode, slow.stdout, slow.stderr)
    if name in ("corrupt", "missing"):
        assert fast.returncode == 1 and fast.stdout == ""
        assert len(fast.stderr.splitlines()) == 1 and fast.stderr.startswith("error: ")
    else:
        assert fast.returncode == 0 and fast.stderr == ""


def test_the_reports_read_the_file(env, files):
    old = run(ENTRY, ["inspect", files["old"]], env).stdout
    assert "stamp: xtf==0.0.1" in old and f"pending to {INSTALLED}: 2 step(s)" in old
    assert "tensors: 2 (" in old and "BF16 1, F32 1" in old
    newer = run(ENTRY, ["inspect", files["newer"]], env).stdout
    assert f"pending: cannot migrate to {INSTALLED}" in newer
    assert "stamp: none" in run(ENTRY, ["inspect", files["plain"]], env).stdout


def test_fast_inspect_imports_no_click_and_other_verbs_do(env, files):
    fast = run(WATCH, ["inspect", files["old"]], env)
    assert fast.returncode == 0 and "click modules: 0" in fast.stderr
    for args in (["inspect", files["old"], "--help"], ["history"], ["inspect"]):
        slow = run(WATCH, args, env)
        assert "click modules: 0" not in slow.stderr, args
    helped = run(ENTRY, ["inspect", "--help"], env)
    assert helped.returncode == 0 and "Usage:" in helped.stdout
    missing = run(ENTRY, ["inspect"], env)
    assert missing.returncode == 2 and missing.stderr.startswith("error: missing argument")


def test_fast_inspect_into_a_closed_pipe_exits_quietly(env, files):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    try:
        done = subprocess.run(
            [*ENTRY, "inspect", str(files["old"])],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=env,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0 and done.stderr == b""


def _closing(fd):
    return lambda: os.close(fd)


@pytest.mark.parametrize("command", [ENTRY, CLICK], ids=["entry", "click"])
def test_closed_stdout_or_stderr_is_no_traceback(env, files, command):
    """`xtf inspect F >&-` prints nothing and succeeds (as into a closed pipe); `2>&-` keeps the status."""
    for args in (["inspect", str(files["old"])], ["history"]):
        done = subprocess.run(
            [*command, *args], stderr=subprocess.PIPE, env=env, timeout=120, preexec_fn=_closing(1)
        )
        assert done.returncode == 0 and done.stderr == b"", (args, done.stderr[-300:])
    failed = subprocess.run(
        [*command, "inspect", str(files["missing"])],
        stdout=subprocess.PIPE,
        env=env,
        timeout=120,
        preexec_fn=_closing(2),
    )
    assert failed.returncode == 1 and failed.stdout == b""
