"""The lockfile: pin derivation, the file format, `xtf lock` / `--check` / `compat` / `migrate --to-lock`,
load-time sha256 enforcement, reversible round trips and concurrent writers."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from legacy_fixtures import Fixture
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import xtf_core
from xtf_cli.cli import main
from xtf_converters import xtransformers
from xtf_core.chain import default_chain, migrate_file
from xtf_core.chain.compat import stamp_matches
from xtf_core.checkpoint.header import read_checkpoint_headers
from xtf_core.checkpoint.stamp import Stamp
from xtf_core.errors import LockError
from xtf_core.lockfile.enforce import LockPinWarning
from xtf_core.lockfile.format import Lockfile, Pin, describe_checkpoint
from xtf_core.testing import raw_tensor_bytes, rename_step_source, write_steps_package

INSTALLED = f"xtf=={xtf_core.__version__}"


def invoke(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    return xtf_core.TransformerWrapper(
        num_tokens=64, max_seq_len=32, attn_layers=xtf_core.Decoder(dim=32, depth=2, heads=4)
    )


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty project folder as the current directory, with no XTF_LOCK from outside."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XTF_LOCK", raising=False)
    return tmp_path


@pytest.fixture
def saved(workdir):
    path = workdir / "model.safetensors"
    xtf_core.save(small_model(), path)
    return path


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------- pins in memory


def test_pin_implies_target_and_loadable_stamps():
    chain = default_chain()
    pin = Pin.parse(INSTALLED)
    assert pin.target(chain) == Stamp.parse(INSTALLED)
    assert pin.stamps(chain) == ["x-transformers>=0.0.9", f"xtf<={xtf_core.__version__}"]
    assert Pin.parse(xtf_core.__version__) == pin  # a bare version pins xtf

    legacy = Pin.parse("x-transformers==1.26.0")
    assert legacy.target(chain) == Stamp("x-transformers", "1.26.0")
    assert legacy.stamps(chain) == ["x-transformers>=1.20.0,<1.27.0"]  # exactly its layout
    assert stamp_matches(Stamp("x-transformers", "1.25.4"), legacy.stamps(chain))
    assert not stamp_matches(Stamp("x-transformers", "1.27.0"), legacy.stamps(chain))
    assert not stamp_matches(Stamp.parse(INSTALLED), legacy.stamps(chain))


def test_pins_that_mean_nothing_are_refused():
    chain = default_chain()
    with pytest.raises(LockError, match="spans 5 x-transformers layouts"):
        Pin.parse("x-transformers>=1.26,<1.28").stamps(chain)
    with pytest.raises(LockError, match="pin xtf or x-transformers"):
        Pin.parse("torch==2.1")
    with pytest.raises(LockError, match="no version specifier"):
        Pin.parse("xtf")
    with pytest.raises(LockError, match="allows no release"):
        Pin.parse("xtf<0.1").target(chain)


def test_lockfile_text_is_deterministic_and_reads_back(saved):
    chain = default_chain()
    lock = Lockfile.new(saved.parent / "xtf.lock", Pin.default(), chain)
    entry = describe_checkpoint(saved, lock.root)
    lock.entries[entry.path] = entry
    lock.write()
    text = (saved.parent / "xtf.lock").read_text()
    again = Lockfile.read(saved.parent / "xtf.lock")
    assert again.entries == lock.entries and str(again.pin) == INSTALLED
    assert again.render() == text
    assert "lock-version = 1\n" in text and 'path = "model.safetensors"' in text
    assert entry.fingerprint_digest and entry.spec_digest.startswith("sha256:")
    assert entry.size == saved.stat().st_size


def test_unknown_lock_version_is_refused(workdir):
    (workdir / "xtf.lock").write_text('lock-version = 2\n[pin]\nrequirement = "xtf==0.1.0"\n')
    result = invoke("lock", "--check")
    assert result.exit_code == 1 and "lock-version 2" in result.stderr and "upgrade xtf" in result.stderr


# -------------------------------------------------------------------------------- lock and --check


def test_lock_then_check_passes_and_a_changed_byte_fails_check_and_load(saved):
    result = invoke("lock", saved.name)
    assert result.exit_code == 0, result.output
    lock = Lockfile.read(saved.parent / "xtf.lock")
    assert list(lock.entries) == ["model.safetensors"] and str(lock.pin) == INSTALLED
    assert lock.entries["model.safetensors"].stamp == INSTALLED

    result = invoke("lock", "--check")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: 1 locked checkpoint(s)")
    xtf_core.load(saved)  # found in the current folder, matches

    flip_last_byte(saved)
    result = invoke("lock", "--check")
    assert result.exit_code == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("model.safetensors: sha256 ")
    assert "differs from the locked" in lines[0]
    with pytest.raises(LockError, match="not the checkpoint locked in"):
        xtf_core.load(saved)
    xtf_core.load(saved, lock=False)  # the check can be turned off explicitly


def test_load_finds_the_lock_in_a_parent_folder_or_from_xtf_lock(saved, monkeypatch):
    assert invoke("lock", saved.name).exit_code == 0
    flip_last_byte(saved)
    nested = saved.parent / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    with pytest.raises(LockError):
        xtf_core.load(saved)
    elsewhere = saved.parent.parent / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    xtf_core.load(saved)  # no lock in reach: not checked
    monkeypatch.setenv("XTF_LOCK", str(saved.parent / "xtf.lock"))
    with pytest.raises(LockError):
        xtf_core.load(saved)
    with pytest.raises(LockError):
        xtf_core.load(saved, lock=saved.parent / "xtf.lock")


def test_unlocked_files_load_unchecked_next_to_a_lock(saved):
    assert invoke("lock").exit_code == 0  # a lockfile with a pin and no checkpoints
    other = saved.parent / "other.safetensors"
    xtf_core.save(small_model(1), other)
    xtf_core.load(other)
    assert "checkpoint" not in (saved.parent / "xtf.lock").read_text()


def test_installed_version_outside_the_pin_warns_loudly_and_fails_check(saved):
    assert invoke("lock", saved.name).exit_code == 0
    path = saved.parent / "xtf.lock"
    lock = Lockfile.read(path)
    lock.pin = Pin.parse("xtf>=9")  # as if pinned by a newer xtf
    lock.write()
    with pytest.warns(LockPinWarning, match=r"does not satisfy the pin xtf>=9"):
        xtf_core.load(saved)
    result = invoke("lock", "--check")
    assert result.exit_code == 1
    assert "does not satisfy the pin xtf>=9" in result.stdout


def test_missing_file_is_one_line_per_problem(saved, workdir):
    other = workdir / "other.safetensors"
    xtf_core.save(small_model(1), other)
    assert invoke("lock", saved.name, other.name).exit_code == 0
    other.unlink()
    flip_last_byte(saved)
    result = invoke("lock", "--check", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and len(report["problems"]) == 2
    assert report["problems"][1] == "other.safetensors: locked in xtf.lock but missing"


def test_adding_a_file_the_pin_excludes_is_refused_with_the_command_that_fixes_it(saved):
    result = invoke("lock", "--pin", "x-transformers==1.26.0")
    assert result.exit_code == 0, result.output
    result = invoke("lock", saved.name)
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert (
        message.count("\n") == 0
        and f"stamped {INSTALLED}, which x-transformers==1.26.0 cannot load" in message
    )
    command = message.split("fix: ", 1)[1].split(",")[0]
    assert command == "xtf migrate model.safetensors --to x-transformers==1.26.0 --in-place"
    assert "checkpoint" not in (saved.parent / "xtf.lock").read_text()

    result = invoke(*shlex.split(command)[1:])  # run the suggested command, then lock again
    assert result.exit_code == 0, result.output
    assert invoke("lock", saved.name).exit_code == 0
    assert invoke("lock", "--check").exit_code == 0


# ---------------------------------------------------------------------------------- migrate --to-lock


def test_pin_older_then_migrate_to_lock_writes_that_stamp_and_check_passes(saved):
    assert invoke("lock", saved.name).exit_code == 0
    result = invoke("lock", "--pin", "x-transformers==1.26.0")
    assert result.exit_code == 0
    assert (
        "fix: xtf migrate model.safetensors --to-lock --in-place" in result.stderr
    )  # now excluded: a warning
    check = invoke("lock", "--check")
    assert (
        check.exit_code == 1 and "cannot load; fix: xtf migrate model.safetensors --to-lock" in check.stdout
    )

    out = saved.parent / "old.safetensors"
    result = invoke("migrate", saved.name, "--to-lock", "-o", out.name)
    assert result.exit_code == 0, result.output
    assert str(read_checkpoint_headers(out).metadata["xtf.version"]) == "1.26.0"
    assert read_checkpoint_headers(out).metadata["xtf.lineage"] == "x-transformers"

    result = invoke("migrate", saved.name, "--to-lock", "--in-place")
    assert result.exit_code == 0, result.output
    assert "re-locked model.safetensors at x-transformers==1.26.0" in result.stdout
    assert invoke("lock", "--check").exit_code == 0
    assert (
        Lockfile.read(saved.parent / "xtf.lock").entries["model.safetensors"].stamp
        == "x-transformers==1.26.0"
    )
    # xtf still reads the downgraded file (migrating it up in memory), and it computes the same function
    tokens = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        assert torch.allclose(xtf_core.load(saved)(tokens), small_model()(tokens), atol=1e-5)


def test_migrate_lock_options_are_checked(saved):
    assert invoke("lock").exit_code == 0
    result = invoke("migrate", saved.name, "--to-lock", "--to", "0.1.0", "-o", "x.safetensors")
    assert result.exit_code == 2 and "not both" in result.output
    result = invoke("migrate", saved.name, "--lockfile", "xtf.lock", "-o", "x.safetensors")
    assert result.exit_code == 2 and "--lockfile goes with --to-lock" in result.output
    result = invoke("migrate", saved.name, "--to-lock", "--lockfile", "none.lock", "-o", "x.safetensors")
    assert result.exit_code == 1 and "no such lockfile" in result.stderr


IRREVERSIBLE = '''"""Fold the gate into the weights."""

revision = "xtf==0.1.0"
down_revision = "xtf==0.0.5"
reversible = False
irreversible_reason = "the gate is folded into the weights"
ops = []
'''


def test_downgrade_through_an_irreversible_step_is_refused_with_the_reason(workdir, monkeypatch):
    package = "lock_irreversible_steps"
    write_steps_package(
        workdir / "steps",
        package,
        {
            "s1_rename": rename_step_source("xtf==0.0.5", "xtf==0.0.1", "a.*", "b.*"),
            "s2_fold": IRREVERSIBLE,
        },
    )
    monkeypatch.syspath_prepend(str(workdir / "steps"))
    monkeypatch.setenv("XTF_MIGRATIONS_PACKAGE", package)
    from xtf_core.testing import write_checkpoint

    write_checkpoint(
        "m.safetensors", {"b.weight": torch.ones(2)}, "xtf==0.1.0", {"class": "TransformerWrapper"}
    )
    assert invoke("lock", "--pin", "xtf==0.0.5").exit_code == 0
    result = invoke("lock", "m.safetensors")
    assert result.exit_code == 1 and "no migration can" in result.stderr
    assert "the gate is folded into the weights" in result.stderr
    result = invoke("migrate", "m.safetensors", "--to-lock", "-o", "old.safetensors")
    assert result.exit_code == 1
    assert "irreversible" in result.stderr and "the gate is folded into the weights" in result.stderr
    assert not Path("old.safetensors").exists()


def test_upgrade_then_downgrade_returns_byte_identical_tensors(tmp_path):
    for name in ("dec_rotary", "dec_scalenorm"):
        fixture = Fixture("1.26.0", name)
        old = tmp_path / f"{name}.safetensors"
        xtransformers.convert(fixture.pt, old, release="1.26.0", config=fixture.config)
        up, down = tmp_path / f"{name}.up.safetensors", tmp_path / f"{name}.down.safetensors"
        migrate_file(old, up)
        assert read_checkpoint_headers(up).metadata["xtf.version"] == xtf_core.__version__
        migrate_file(up, down, target="x-transformers==1.26.0")
        before, after = read_checkpoint_headers(old).shards, read_checkpoint_headers(down).shards
        names = set(next(iter(before.values())).tensors)
        assert names == set(next(iter(after.values())).tensors)
        for tensor in sorted(names):
            assert raw_tensor_bytes(old, tensor) == raw_tensor_bytes(down, tensor), (name, tensor)
        with safe_open(str(down), "pt") as handle:
            spec = json.loads(handle.metadata()["xtf.spec"])
        # the spec keeps every original option (a step may also pin a default it made explicit)
        assert {k: v for k, v in spec["attn_layers"].items() if k in fixture.config["attn_layers"]} == (
            fixture.config["attn_layers"]
        )
        assert not [k for k in json.dumps(spec).split('"') if k.startswith("xtf_")]


# ----------------------------------------------------------------------------------------- sharded


def make_sharded(folder: Path) -> None:
    single = folder.parent / "single.safetensors"
    xtf_core.save(small_model(2), single)
    with safe_open(str(single), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(single))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    folder.mkdir()
    for shard, members in shards.items():
        save_file({n: tensors[n] for n in members}, str(folder / shard), metadata)
    index = {"metadata": dict(metadata), "weight_map": {n: s for s, ms in shards.items() for n in ms}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def test_sharded_folder_is_locked_per_file_and_a_changed_shard_is_named(workdir):
    folder = workdir / "sharded"
    make_sharded(folder)
    assert invoke("lock", "sharded").exit_code == 0
    entry = Lockfile.read(workdir / "xtf.lock").entries["sharded"]
    assert [f.name for f in entry.files] == sorted(p.name for p in folder.iterdir())
    assert invoke("lock", "--check").exit_code == 0
    xtf_core.load(folder)
    xtf_core.load(folder / "model.safetensors.index.json")

    flip_last_byte(folder / "model-00002-of-00002.safetensors")
    result = invoke("lock", "--check")
    assert result.exit_code == 1
    assert result.stdout.startswith("sharded/model-00002-of-00002.safetensors: sha256")
    with pytest.raises(LockError, match="model-00002-of-00002.safetensors changed"):
        xtf_core.load(folder)


def test_load_hashes_while_reading(saved, monkeypatch):
    """The lock check reads no file a second time on the happy path."""
    assert invoke("lock", saved.name).exit_code == 0
    import xtf_core.lockfile.enforce as lock_module

    def no_second_read(path):
        raise AssertionError(f"{path} was hashed separately")

    monkeypatch.setattr(lock_module, "hash_file", no_second_read)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xtf_core.load(saved)


# ------------------------------------------------------------------------------------------- compat


def test_compat_matrix_and_file_targets(saved):
    result = invoke("compat", saved.name, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    chain = default_chain()
    assert [layout["node"] for layout in report["layouts"]] == [str(n) for n in chain.nodes]
    matrix = report["matrix"]
    assert matrix[INSTALLED][INSTALLED] == "direct"
    assert matrix[INSTALLED]["x-transformers==1.20.0"] == "at load"
    assert matrix["x-transformers==1.20.0"][INSTALLED] == "migrate"
    assert matrix["x-transformers==1.20.0"]["x-transformers==1.20.0"] == "direct"
    targets = {t["node"]: t for t in report["file"]["targets"]}
    assert targets[INSTALLED]["kind"] == "direct"
    assert targets["x-transformers==1.20.0"]["detail"].endswith(
        "xtf migrate model.safetensors --to x-transformers==1.20.0 -o OUT"
    )
    text = invoke("compat").stdout
    assert "x-transformers>=1.20.0,<1.27.0" in text and " = " in text


# --------------------------------------------------------------------------------------- concurrency


def test_concurrent_lock_runs_adding_different_files_both_land(workdir):
    names = [f"m{i}.safetensors" for i in range(4)]
    for i, name in enumerate(names):
        xtf_core.save(small_model(i), workdir / name, fingerprint=False)
    assert invoke("lock").exit_code == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    script = "import sys; from xtf_cli.cli import main; main(sys.argv[1:])"
    for _ in range(3):  # a few rounds, so the writers really overlap
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, "lock", name],
                cwd=workdir,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for name in names
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
        lock = Lockfile.read(workdir / "xtf.lock")
        assert sorted(lock.entries) == names
        (workdir / "xtf.lock").write_text(lock.__class__.new(lock.path, lock.pin, default_chain()).render())
    assert not [p for p in workdir.iterdir() if ".xtf-tmp-" in p.name]


@pytest.mark.parametrize("verb", ["lock", "compat"])
def test_lock_verbs_have_help(verb):
    result = invoke(verb, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output


def test_check_without_a_lockfile_is_one_line(workdir):
    result = invoke("lock", "--check")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: xtf.lock: no such lockfile; create it with xtf lock"
