"""The xtf CLI: verbs, JSON output, exit codes, and one-line errors with no traceback."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import xtf_core
from xtf_cli.cli import main
from xtf_core.testing import rename_step_source, write_checkpoint, write_steps_package

INSTALLED = f"xtf=={xtf_core.__version__}"
SPEC = {"class": "TransformerWrapper", "num_tokens": 8, "attn_layers": {"class": "Decoder", "dim": 4}}
IRREVERSIBLE_STEP = '''"""Fold the gate into the weights."""

from xtf_core.chain import ValueTransform

revision = "{installed}"
down_revision = "xtf==0.0.5"
reversible = False
irreversible_reason = "the gate is folded into the weights"

ops = [ValueTransform("b.weight", lambda t: t * 2)]
'''.replace("{installed}", INSTALLED)


@pytest.fixture
def steps(tmp_path, monkeypatch, request):
    """A steps package: xtf==0.0.1 -[rename a.* -> b.*]-> xtf==0.0.5 -[irreversible]-> the installed release."""
    package = f"cli_steps_{request.node.name.replace('[', '_').replace(']', '_').replace('-', '_')}"
    root = tmp_path / "steps"
    write_steps_package(
        root,
        package,
        {
            "s001_rename": rename_step_source("xtf==0.0.5", "xtf==0.0.1", "a.*", "b.*"),
            "s002_fold": IRREVERSIBLE_STEP,
        },
    )
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("XTF_MIGRATIONS_PACKAGE", package)
    return {"PYTHONPATH": str(root), "XTF_MIGRATIONS_PACKAGE": package}


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "model.safetensors"
    write_checkpoint(
        path, {"a.weight": torch.ones(2, 2), "c": torch.zeros(3, dtype=torch.bfloat16)}, "xtf==0.0.1", SPEC
    )
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("verb", ["inspect", "migrate", "history", "verify"])
def test_every_verb_has_help(verb):
    result = invoke(verb, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output


def test_inspect_json(steps, ckpt):
    result = invoke("inspect", ckpt, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["stamp"] == "xtf==0.0.1" and report["origin"] == "xtf==0.0.1"
    assert report["spec"] == SPEC
    assert report["tensors"] == 2 and report["bytes"] == 16 + 6
    assert report["dtypes"] == {"BF16": 1, "F32": 1}
    assert [step["to"] for step in report["pending"]] == ["xtf==0.0.5", INSTALLED]


def test_inspect_text_and_unstamped(steps, ckpt, tmp_path):
    text = invoke("inspect", ckpt)
    assert text.exit_code == 0
    assert "stamp: xtf==0.0.1" in text.output and f"pending to {INSTALLED}: 2 step(s)" in text.output
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(1)}, str(plain))
    result = invoke("inspect", plain)
    assert result.exit_code == 0 and "stamp: none" in result.output


def test_inspect_corrupt_file_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 16)
    assert_one_line_error(invoke("inspect", bad), str(bad), "larger than the file")


def test_migrate_writes_output_and_json_plan(steps, ckpt, tmp_path):
    out = tmp_path / "out.safetensors"
    result = invoke("migrate", ckpt, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["to"] == INSTALLED and [s["id"] for s in plan["steps"]] == ["xtf==0.0.5", INSTALLED]
    report = json.loads(invoke("inspect", out, "--json").stdout)
    assert report["stamp"] == INSTALLED and report["pending"] == [] and len(report["migrations"]) == 2


def test_migrate_to_older_stamp_through_irreversible_step_fails_up_front(steps, ckpt, tmp_path):
    out = tmp_path / "out.safetensors"
    assert invoke("migrate", ckpt, "-o", out).exit_code == 0
    back = tmp_path / "back.safetensors"
    assert_one_line_error(
        invoke("migrate", out, "-o", back, "--to", "0.0.1"), "the gate is folded into the weights"
    )
    assert not back.exists()
    partial = invoke("migrate", out, "-o", back, "--to", "xtf==0.0.5", "--dry-run")
    assert partial.exit_code == 1


def test_dry_run_writes_nothing(steps, ckpt, tmp_path):
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke("migrate", ckpt, "--in-place", "--dry-run", "--to", "0.0.5")
    assert result.exit_code == 0 and "dry run: nothing written" in result.output
    assert "renamed     b.weight <- a.weight" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_in_place_then_backup_exists_error(steps, ckpt):
    assert invoke("migrate", ckpt, "--in-place", "--to", "0.0.5").exit_code == 0
    assert ckpt.with_name("model.safetensors.bak").exists()
    assert_one_line_error(invoke("migrate", ckpt, "--in-place"), "model.safetensors.bak already exists")


def test_newer_checkpoint_names_versions_and_fix(steps, tmp_path):
    newer = tmp_path / "newer.safetensors"
    write_checkpoint(newer, {"b.weight": torch.ones(1)}, "xtf==9.0.0", SPEC)
    assert_one_line_error(
        invoke("migrate", newer, "-o", tmp_path / "o"), "xtf==9.0.0", xtf_core.__version__, "upgrade xtf"
    )


def test_bad_to_option_and_missing_output(steps, ckpt):
    # a malformed value is a usage error (exit 2), still one line; see tests/test_cli_usage_errors.py
    bad = invoke("migrate", ckpt, "--in-place", "--to", "keras==1.0")
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ")
    assert "unknown lineage" in bad.stderr
    assert invoke("migrate", ckpt).exit_code == 2


def test_history_lists_chain_oldest_first(steps):
    result = invoke("history")
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "xtf==0.0.1 -> xtf==0.0.5  xtf==0.0.5  (reversible)  Rename a.* to b.* (synthetic step for tests and benchmarks).",
        f"xtf==0.0.5 -> {INSTALLED}  {INSTALLED}  (irreversible: the gate is folded into the weights)  Fold the gate into the weights.",
    ]
    rows = json.loads(invoke("history", "--json").stdout)
    assert [row["reversible"] for row in rows] == [True, False]


def run_xtf(args, env_extra, **kwargs):
    env = {**os.environ, **env_extra}
    script = "import sys; from xtf_cli.cli import main; sys.argv = ['xtf', *sys.argv[1:]]; main()"
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True, text=True, **kwargs
    )


def test_inspect_and_rename_only_migrate_do_not_import_torch(steps, ckpt):
    probe = textwrap.dedent(
        """
        import sys
        from xtf_cli.cli import main
        def run(*args):
            try:
                main(list(args))
            except SystemExit as exit:
                assert exit.code in (0, None), exit.code

        run("inspect", sys.argv[1])
        assert "torch" not in sys.modules, "xtf inspect imported torch"
        assert "safetensors" not in sys.modules, "xtf inspect imported safetensors"
        run("migrate", sys.argv[1], "-o", sys.argv[1] + ".out", "--to", "0.0.5")
        assert "torch" not in sys.modules, "a rename-only xtf migrate imported torch"
        print("NO TORCH")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(ckpt)], env={**os.environ, **steps}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "stamp: xtf==0.0.1" in result.stdout and "NO TORCH" in result.stdout


def test_console_script_errors_are_one_line(tmp_path):
    xtf = Path(sys.executable).with_name("xtf")
    missing = tmp_path / "missing.safetensors"
    result = subprocess.run([str(xtf), "inspect", str(missing)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {missing}: no such file or folder"]


def test_inspect_with_the_installed_chain_does_not_import_torch(tmp_path):
    """The real step modules must stay importable by header-only tools."""
    legacy = tmp_path / "legacy.safetensors"
    write_checkpoint(legacy, {"a": torch.ones(2)}, "x-transformers==1.20.0", SPEC)
    probe = (
        "import sys\n"
        "from xtf_cli.cli import main\n"
        "try:\n    main(['inspect', sys.argv[1], '--json'])\n"
        "except SystemExit as exit:\n    assert exit.code in (0, None)\n"
        "assert 'torch' not in sys.modules, 'inspect imported torch'\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "XTF_MIGRATIONS_PACKAGE"}
    result = subprocess.run(
        [sys.executable, "-c", probe, str(legacy)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["stamp"] == "x-transformers==1.20.0" and report["pending"][-1]["to"] == INSTALLED
