"""One open, one plan: each header is parsed once per `load` and per `migrate`, tensors come from the file's
memory map without a copy, a plan handed on is the plan run, and a locked load hashes in the same pass."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import xtf_core
from xtf_core.chain.plan import plan_file
from xtf_core.chain.stream import migrate_file
from xtf_core.checkpoint import header as header_module
from xtf_core.checkpoint.source import open_checkpoint
from xtf_core.errors import LockError, MigrationError
from xtf_core.loading import load_state
from xtf_core.lockfile.verbs import lock_checkpoints

SPEC = {
    "class": "TransformerWrapper",
    "num_tokens": 32,
    "max_seq_len": 16,
    "attn_layers": {"class": "Decoder", "dim": 16, "depth": 2, "heads": 2, "rotary_pos_emb": True},
}
LEGACY = Path(__file__).parent / "fixtures" / "legacy" / "1.26.0"


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts every header and index parse, by file name."""
    counts: Counter = Counter()
    read_header, read_index = header_module.read_header, header_module.read_index

    def counted_header(path, *args, **kwargs):
        counts[Path(path).name] += 1
        return read_header(path, *args, **kwargs)

    def counted_index(path, *args, **kwargs):
        counts[Path(path).name] += 1
        return read_index(path, *args, **kwargs)

    monkeypatch.setattr(header_module, "read_header", counted_header)
    monkeypatch.setattr(header_module, "read_index", counted_index)
    return counts


def saved(tmp_path: Path, name: str = "model.safetensors") -> Path:
    torch.manual_seed(0)
    return xtf_core.save(xtf_core.build(SPEC), tmp_path / name, fingerprint=False)


def legacy_checkpoint(tmp_path: Path) -> Path:
    """A real x-transformers 1.26.0 checkpoint stamped as such, so loading it runs the chain."""
    from xtf_converters import xtransformers

    config = json.loads((LEGACY / "dec_plain.json").read_text())["config"]
    out = tmp_path / "old.safetensors"
    xtransformers.convert(LEGACY / "dec_plain.pt", out, release="1.26.0", config=config)
    return out


def test_load_parses_the_header_once(tmp_path: Path, parses: Counter) -> None:
    path = saved(tmp_path)
    parses.clear()
    xtf_core.load(path, lock=False)
    assert parses == Counter({"model.safetensors": 1})


def test_locked_load_parses_the_header_once(tmp_path: Path, parses: Counter) -> None:
    path = saved(tmp_path)
    lock = tmp_path / "xtf.lock"
    lock_checkpoints(lock, [path])
    parses.clear()
    xtf_core.load(path, lock=lock)
    assert parses == Counter({"model.safetensors": 1})


def test_migrating_load_parses_once_and_routes_once(
    tmp_path: Path, parses: Counter, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = legacy_checkpoint(tmp_path)
    from xtf_core.chain.graph import Chain

    routes = []
    original = Chain.route

    def counted_route(self, *args, **kwargs):
        routes.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Chain, "route", counted_route)
    parses.clear()
    xtf_core.load(path, lock=False)
    assert parses == Counter({"old.safetensors": 1})
    assert len(routes) == 1


def test_migrate_file_and_the_cli_parse_the_source_once(tmp_path: Path, parses: Counter) -> None:
    from xtf_cli.cli import main

    path = legacy_checkpoint(tmp_path)
    parses.clear()
    migrate_file(path, tmp_path / "a.safetensors")
    assert parses == Counter({"old.safetensors": 1})
    parses.clear()
    result = CliRunner().invoke(main, ["migrate", str(path), "-o", str(tmp_path / "b.safetensors")])
    assert result.exit_code == 0, result.output
    assert parses == Counter({"old.safetensors": 1})


def test_a_plan_handed_to_migrate_file_is_the_plan_run(tmp_path: Path, parses: Counter) -> None:
    path = legacy_checkpoint(tmp_path)
    parses.clear()
    with open_checkpoint(path) as opened:
        plan = plan_file(opened)
        written = []
        result = migrate_file(opened, tmp_path / "out.safetensors", plan=plan, progress=written.append)
    assert result is plan
    assert sum(written) == plan.output_bytes  # the progress bar's total is the bytes written
    assert parses == Counter({"old.safetensors": 1})
    migrated = load_file(tmp_path / "out.safetensors")
    direct = migrate_file(path, tmp_path / "direct.safetensors")
    assert direct.to_json()["tensors"] == plan.to_json()["tensors"]
    again = load_file(tmp_path / "direct.safetensors")
    assert sorted(migrated) == sorted(again)
    for name, tensor in again.items():
        torch.testing.assert_close(migrated[name], tensor, rtol=0, atol=0)


def test_a_plan_for_another_file_or_target_is_refused(tmp_path: Path) -> None:
    path = legacy_checkpoint(tmp_path)
    other = saved(tmp_path)
    plan = plan_file(path)
    with pytest.raises(MigrationError, match="the plan was made for"):
        migrate_file(other, tmp_path / "out.safetensors", plan=plan)
    with pytest.raises(MigrationError, match="the plan targets"):
        migrate_file(path, tmp_path / "out.safetensors", plan=plan, target="x-transformers==1.26.0")
    assert not (tmp_path / "out.safetensors").exists()


def test_tensors_are_views_of_the_file_map(tmp_path: Path) -> None:
    """Without a lockfile no tensor is copied: each sits at its file offset inside one mapping."""
    path = saved(tmp_path)
    with open_checkpoint(path) as opened:
        tensors = opened.read_tensors()
        header = opened.headers.shards[path.name]
    reference = load_file(path)
    bases = set()
    for name, entry in header.tensors.items():
        torch.testing.assert_close(tensors[name], reference[name], rtol=0, atol=0)
        if entry.nbytes:
            bases.add(tensors[name].data_ptr() - header.file_offset(entry))
    assert len(bases) == 1  # every tensor at its own offset from one base address: no copies
    name = next(iter(header.tensors))
    tensors[name].add_(1)  # copy-on-write: the file is not changed
    torch.testing.assert_close(load_file(path)[name], reference[name], rtol=0, atol=0)


def test_tensors_no_step_touches_are_not_copied(tmp_path: Path) -> None:
    path = legacy_checkpoint(tmp_path)
    plan = plan_file(path)
    header = plan.headers.shards[path.name]
    untouched = {
        action.name: header.tensors[action.sources[0]]
        for action in plan.actions
        if action.action in ("kept", "renamed")
    }
    assert untouched
    tensors, _, info = load_state(path)
    assert info.applied
    bases = {
        tensors[name].data_ptr() - header.file_offset(entry)
        for name, entry in untouched.items()
        if entry.nbytes
    }
    assert len(bases) == 1


def test_locked_load_refuses_a_changed_file_and_loads_the_locked_one(tmp_path: Path) -> None:
    path = saved(tmp_path)
    lock = tmp_path / "xtf.lock"
    lock_checkpoints(lock, [path])
    model = xtf_core.load(path, lock=lock)
    reference = load_file(path)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(LockError, match="sha256"):
        xtf_core.load(path, lock=lock)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_to_cuda_goes_straight_there(tmp_path: Path) -> None:
    path = saved(tmp_path)
    lock = tmp_path / "xtf.lock"
    lock_checkpoints(lock, [path])
    reference = load_file(path)
    for kwargs in ({"lock": False}, {"lock": lock}):
        model = xtf_core.load(path, device="cuda", **kwargs)
        for name, tensor in model.state_dict().items():
            assert tensor.device.type == "cuda"
            torch.testing.assert_close(tensor.cpu(), reference[name], rtol=0, atol=0)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(LockError, match="sha256"):
        xtf_core.load(path, lock=lock, device="cuda")
