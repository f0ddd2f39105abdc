"""Sharded load/save through DCP on CPU (gloo), world sizes 1, 2 and 4, plus single-process checks of the
slice reader, the refusals, consolidation, the CLI on a sharded save and the DCP import."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import xtf_core
from xtf_core.chain import migrate_file, ops
from xtf_core.chain.tensors import Realiser, StoredBytes, Workspace
from xtf_core.checkpoint.header import INDEX_FILENAME, read_checkpoint_headers
from xtf_core.checkpoint.writer import write_tensors
from xtf_core.distributed.slices import SliceReader, plan_load
from xtf_core.errors import VersionError
from xtf_core.loading import read_tensors

LEGACY = Path(__file__).parent / "fixtures" / "legacy" / "1.26.0"
SPEC = {
    "class": "TransformerWrapper",
    "num_tokens": 50,
    "max_seq_len": 16,
    "attn_layers": {"class": "Decoder", "dim": 24, "depth": 2, "heads": 3},
}
DEADLINE_S = 240  # a hang detector, not a timing: generous for loaded 2-core machines
# what every rank loads: current, legacy (renames, value transforms, a row permutation), sharded folders
CASES = (
    "current.safetensors",
    "plain.safetensors",
    "scalenorm.safetensors",
    "scalenorm_sharded",
    "rotary.safetensors",
    "rotary_sharded",
    "rotary_migrated",
    "old_rotary.safetensors",
)
OLD_RELEASE = "0.15.0"  # a 0.x-era rotary decoder (rotary halves, values rotated, no final-norm layout)


def _convert_legacy(name: str, out: Path, release: str = "1.26.0") -> Path:
    from xtf_converters import xtransformers

    folder = LEGACY.parent / release
    config = json.loads((folder / f"{name}.json").read_text())["config"]
    xtransformers.convert(folder / f"{name}.pt", out, release=release, config=config)
    return out


def _shard(src: Path, folder: Path, parts: int) -> Path:
    """Split a single-file checkpoint into a sharded folder with the same stamp (a test helper)."""
    headers = read_checkpoint_headers(src)
    tensors = read_tensors(headers)
    metadata = headers.metadata
    names = list(tensors)
    folder.mkdir()
    weight_map = {}
    for number in range(parts):
        shard = f"model-{number + 1:05d}-of-{parts:05d}.safetensors"
        chunk = {name: tensors[name] for name in names[number::parts]}
        write_tensors(folder / shard, chunk, metadata)
        weight_map |= dict.fromkeys(chunk, shard)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {**metadata, "total_size": total}, "weight_map": weight_map}
    (folder / INDEX_FILENAME).write_text(json.dumps(index))
    return folder


def _restamp(src: Path, out: Path, version: str) -> Path:
    headers = read_checkpoint_headers(src)
    write_tensors(out, read_tensors(headers), {**headers.metadata, "xtf.version": version})
    return out


# ---------------------------------------------------------------- single process


def _stored_workspace(tmp_path: Path) -> tuple[Workspace, SliceReader, dict]:
    torch.manual_seed(0)
    tensors = {
        "a": torch.randn(6, 4, 5),
        "b": torch.randn(8, 6),
        "c": torch.randn(8, 6),
        "d": torch.randn(12, 10),
        "s": torch.tensor(3.0),
    }
    path = tmp_path / "raw.safetensors"
    write_tensors(path, tensors, {"format": "pt"})
    headers = read_checkpoint_headers(path)
    ws = Workspace(
        {
            e.name: StoredBytes(e.dtype, e.shape, shard, headers.shards[shard].file_offset(e), e.name)
            for shard, e in headers.entries()
        }
    )
    return ws, SliceReader(headers), tensors


def test_every_slice_of_every_op_matches_the_whole_tensor(tmp_path):
    ws, reader, _ = _stored_workspace(tmp_path)
    for op in [
        ops.Rename("a", "a2"),
        ops.Split("a2", ("a_lo", "a_hi"), dim=1),  # computed narrow (dim 1)
        ops.Split("d", ("d0", "d1", "d2"), dim=0),  # stored bytes (dim 0)
        ops.Merge(("b", "c"), "bc", dim=1),
        ops.Transpose("bc", 0, 1),
        ops.Reshape("bc", (12, 8), (4, 24)),  # reshape of a computed tensor
        ops.Reshape("d1", (4, 10), (2, 20)),  # reshape of stored bytes
        ops.ValueTransform("a_lo", lambda t: t * 2 + 1, lambda t: (t - 1) / 2),
    ]:
        op.apply(ws)
    whole = Realiser(lambda node: reader.read_slice(node, (0,) * len(node.shape), node.shape))
    gen = torch.Generator().manual_seed(1)
    for name, node in ws.tensors.items():
        full = whole(node)
        assert tuple(full.shape) == node.shape
        for _ in range(12):
            offsets, lengths = [], []
            for size in node.shape:
                start = int(torch.randint(0, size, (1,), generator=gen))
                offsets.append(start)
                lengths.append(int(torch.randint(1, size - start + 1, (1,), generator=gen)))
            expected = full
            for dim, (o, n) in enumerate(zip(offsets, lengths)):
                expected = expected.narrow(dim, o, n)
            assert torch.equal(reader.read_slice(node, offsets, lengths), expected), (name, offsets, lengths)
    reader.close()


def test_non_elementwise_steps_read_whole_tensors_and_keep_the_slice(tmp_path):
    """A 1.26.0 rotary decoder crosses the 1.30.1 row permutation (not elementwise): every slice of every
    tensor equals the same slice of what the single-process load builds."""
    legacy = _convert_legacy("dec_rotary", tmp_path / "rotary.safetensors")
    expected = xtf_core.load(legacy).state_dict()
    plan = plan_load(legacy)
    assert any(step.id == "x-transformers==1.30.1" for step in plan.route.steps)
    reader = SliceReader(plan.headers)
    try:
        for name, node in plan.nodes.items():
            full = expected[name]
            for parts in (1, 2, 3):
                rows = full.shape[0] if full.dim() else 1
                if not full.dim() or rows < parts:
                    continue
                step = -(-rows // parts)
                for start in range(0, rows, step):
                    length = min(step, rows - start)
                    got = reader.read_slice(
                        node, (start, *(0,) * (full.dim() - 1)), (length, *full.shape[1:])
                    )
                    assert torch.equal(got, full.narrow(0, start, length)), (name, parts, start)
    finally:
        reader.close()


def test_single_process_load_save_consolidate_and_cli(tmp_path):
    """Without a process group: load into a plain model, save a sharded folder, consolidate, use the CLI."""
    import xtf_core.distributed as xd

    legacy = _convert_legacy("dec_scalenorm", tmp_path / "scalenorm.safetensors")
    ref = xtf_core.load(legacy)
    model = xtf_core.build(xtf_core.spec_of(ref))
    info = xd.load(legacy, model)
    assert info["applied"]
    for name, tensor in ref.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    folder = xd.save(model, tmp_path / "saved", max_shard_bytes=1024)
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1
    single = tmp_path / "single.safetensors"
    report = xd.consolidate(folder, single)
    assert report.shards > 1
    for path in (folder, single):
        back = xtf_core.load(path)
        for name, tensor in ref.state_dict().items():
            assert torch.equal(back.state_dict()[name], tensor), (path, name)
    for verb in (["inspect", str(folder)], ["verify", str(folder)], ["verify", str(single)]):
        done = subprocess.run([sys.executable, "-m", "xtf_cli.cli", *verb], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    lockfile = tmp_path / "xtf.lock"
    for verb in (
        ["lock", str(folder), "--lockfile", str(lockfile)],
        ["lock", "--check", "--lockfile", str(lockfile)],
    ):
        done = subprocess.run([sys.executable, "-m", "xtf_cli.cli", *verb], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    xtf_core.load(folder, lock=lockfile)
    shard = sorted(folder.glob("model-*-of-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    done = subprocess.run(
        [sys.executable, "-m", "xtf_cli.cli", "lock", "--check", "--lockfile", str(lockfile)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and shard.name in done.stdout + done.stderr
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert (
        "sharded"
        in subprocess.run(
            [sys.executable, "-m", "xtf_cli.cli", "inspect", str(folder)], capture_output=True, text=True
        ).stdout
    )
    done = subprocess.run(
        [sys.executable, "-m", "xtf_cli.cli", "consolidate", str(folder), "-o", str(single)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and done.stderr.startswith("error: output") and done.stderr.count("\n") == 1


def test_newer_file_and_spec_mismatch_single_process(tmp_path):
    import xtf_core.distributed as xd

    torch.manual_seed(0)
    current = tmp_path / "cur.safetensors"
    xtf_core.save(xtf_core.build(SPEC), current)
    newer = _restamp(current, tmp_path / "newer.safetensors", "99.0.0")
    with pytest.raises(VersionError, match="newer than the installed"):
        xd.load(newer, xtf_core.build(SPEC))
    other = xtf_core.build({**SPEC, "attn_layers": {**SPEC["attn_layers"], "heads": 4}})
    with pytest.raises(xtf_core.errors.SpecError, match="'attn_layers.heads': file 3, model 4"):
        xd.load(current, other)


# ---------------------------------------------------------------- multi-process (gloo)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fsdp(model, world: int):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    for layer in model.attn_layers.layers:
        fully_shard(layer[1], mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _sharded_like(ref, world: int):
    with torch.device("meta"):
        model = xtf_core.build(xtf_core.spec_of(ref))
    _fsdp(model, world)
    return model.to_empty(device="cpu")


def _tokens(model) -> torch.Tensor:
    return torch.randint(0, model.num_tokens, (2, 4), generator=torch.Generator().manual_seed(3))


def _error_of(fn) -> str | None:
    try:
        fn()
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return None


def _worker(rank: int, world: int, port: int, root: str) -> None:
    import warnings

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    import xtf_core.distributed as xd

    warnings.filterwarnings("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    root_path = Path(root)
    results: dict = {}
    try:
        for case in CASES:
            ref = xtf_core.load(root_path / case)
            model = _sharded_like(ref, world)
            tokens = _tokens(ref)
            info = xd.load(root_path / case, model)
            gathered = {
                name: t.full_tensor() if hasattr(t, "full_tensor") else t
                for name, t in model.state_dict().items()
            }
            same = all(torch.equal(gathered[name], t) for name, t in ref.state_dict().items())
            with torch.no_grad():
                out, expected = model.eval()(tokens), ref(tokens)
            results[case] = {
                "identical": same and gathered.keys() == ref.state_dict().keys(),
                "outputs": torch.allclose(out, expected, rtol=0, atol=1e-6),
                "steps": len(info["applied"]),
            }
        xd.save(model, root_path / "saved", max_shard_bytes=8192)
        with torch.no_grad():
            torch.save(model(tokens), root_path / f"saved-out-{rank}.pt")
        # a DCP checkpoint as FSDP training writes it: model state nested, optimizer state beside it
        optim = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()(tokens).sum().backward()
        optim.step()
        with torch.no_grad():
            torch.save(model.eval()(tokens), root_path / f"dcp-out-{rank}.pt")
        dcp.save({"model": model.state_dict(), "optim": optim.state_dict()}, checkpoint_id=root_path / "dcp")
        # bad input: every rank raises, nobody hangs
        good = xtf_core.load(root_path / "current.safetensors")
        results["newer"] = _error_of(
            lambda: xd.load(root_path / "newer.safetensors", _sharded_like(good, world))
        )
        results["missing_shard"] = _error_of(
            lambda: xd.load(root_path / "missing_shard", _sharded_like(good, world))
        )
        wrong = _fsdp(xtf_core.build({**SPEC, "attn_layers": {**SPEC["attn_layers"], "heads": 4}}), world)
        results["spec"] = _error_of(lambda: xd.load(root_path / "current.safetensors", wrong))
        lockfile = root_path / "xtf.lock"
        results["locked"] = _error_of(
            lambda: xd.load(root_path / "locked.safetensors", _sharded_like(good, world), lock=lockfile)
        )
        results["tampered"] = _error_of(
            lambda: xd.load(root_path / "tampered.safetensors", _sharded_like(good, world), lock=lockfile)
        )
        only_rank0 = root_path / ("absent.safetensors" if rank == 0 else "current.safetensors")
        results["one_rank"] = _error_of(lambda: xd.load(only_rank0, _sharded_like(good, world)))
        results["exists"] = _error_of(lambda: xd.save(model, root_path / "saved"))
        dist.barrier()
    except Exception:
        results["crash"] = traceback.format_exc()
    finally:
        torch.save(results, root_path / f"result-{rank}.pt")
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    xtf_core.save(xtf_core.build(SPEC), root / "current.safetensors")
    _convert_legacy("dec_plain", root / "plain.safetensors")
    _convert_legacy("dec_scalenorm", root / "scalenorm.safetensors")
    _convert_legacy("dec_rotary", root / "rotary.safetensors")
    _shard(root / "rotary.safetensors", root / "rotary_sharded", 3)
    migrate_file(root / "rotary_sharded", root / "rotary_migrated")  # through the 1.30.1 permutation
    _convert_legacy("dec_rotary", root / "old_rotary.safetensors", release=OLD_RELEASE)
    _shard(root / "scalenorm.safetensors", root / "scalenorm_sharded", 3)
    _restamp(root / "current.safetensors", root / "newer.safetensors", "99.0.0")
    from xtf_core.lockfile.verbs import lock_checkpoints

    for name in ("locked.safetensors", "tampered.safetensors"):
        shutil.copy(root / "current.safetensors", root / name)
    lock_checkpoints(root / "xtf.lock", [root / "locked.safetensors", root / "tampered.safetensors"])
    data = bytearray((root / "tampered.safetensors").read_bytes())
    data[-1] ^= 0xFF  # a weight changed after locking
    (root / "tampered.safetensors").write_bytes(bytes(data))
    missing = _shard(root / "current.safetensors", root / "missing_shard", 2)
    (missing / "model-00002-of-00002.safetensors").unlink()
    return root


def _spawn(world: int, root: Path) -> list[dict]:
    context = mp.start_processes(
        _worker, args=(world, _free_port(), str(root)), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + DEADLINE_S
    failure = None
    while True:
        try:
            if context.join(timeout=1):
                break
        except Exception as exc:  # a rank exited badly; its results file says whether the checks ran
            failure = exc
            break
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"world size {world}: ranks still running after {DEADLINE_S}s (a hang)")
    missing = [rank for rank in range(world) if not (root / f"result-{rank}.pt").exists()]
    if missing:
        pytest.fail(f"world size {world}: ranks {missing} wrote no results ({failure!r})")
    return [torch.load(root / f"result-{rank}.pt", weights_only=True) for rank in range(world)]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_sharded_load_save_and_errors(world, checkpoints, tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    for item in checkpoints.iterdir():
        os.symlink(item, root / item.name)
    started = time.monotonic()
    results = _spawn(world, root)
    elapsed = time.monotonic() - started
    for rank, result in enumerate(results):
        assert "crash" not in result, f"rank {rank}:\n{result['crash']}"
        for case in CASES:
            assert result[case]["identical"] and result[case]["outputs"], (rank, case, result[case])
        assert result["current.safetensors"]["steps"] == 0
        assert result["plain.safetensors"]["steps"] > 0 and result["scalenorm.safetensors"]["steps"] > 0
        assert result["newer"].startswith("VersionError") and "newer than the installed" in result["newer"]
        assert (
            result["missing_shard"].startswith("CheckpointFormatError")
            and "model-00002" in result["missing_shard"]
        )
        assert result["spec"].startswith("SpecError") and "'attn_layers.heads'" in result["spec"]
        # row permutations (1.30.1) and the 0.x rotary steps are applied to whole tensors, then sliced
        assert result["rotary.safetensors"]["steps"] > 0 and result["rotary_sharded"]["steps"] > 0
        assert result["old_rotary.safetensors"]["steps"] > result["rotary.safetensors"]["steps"]
        assert (
            result["one_rank"].startswith("CheckpointFormatError")
            and "absent.safetensors" in result["one_rank"]
        )
        if rank:
            assert result["one_rank"].startswith("CheckpointFormatError: rank 0:")
        assert result["exists"].startswith("MigrationError") and "already exists" in result["exists"]
        # the lockfile is enforced on every rank: rank 0 hashes, everyone refuses a changed file
        assert result["locked"] is None, result["locked"]
        assert result["tampered"].startswith("LockError") and "tampered.safetensors" in result["tampered"]
    # the sharded save round-trips exactly through a single-process load
    saved = xtf_core.load(root / "saved")
    reference = xtf_core.load(root / CASES[-1])  # the model saved is the last one loaded
    for name, tensor in reference.state_dict().items():
        assert torch.equal(saved.state_dict()[name], tensor), name
    tokens = _tokens(saved)
    with torch.no_grad():
        assert torch.allclose(
            saved(tokens), torch.load(root / "saved-out-0.pt", weights_only=True), rtol=0, atol=1e-6
        )
    from xtf_core.verification import verify_checkpoint

    assert verify_checkpoint(root / "saved").checked == "fingerprint"
    # the DCP checkpoint of the FSDP2 model imports and reproduces its outputs
    from xtf_converters import dcp

    report = dcp.convert(root / "dcp", root / "imported.safetensors", config=xtf_core.spec_of(saved))
    assert report.state_dict_at == "model" and report.skipped > 0
    with torch.no_grad():
        out = xtf_core.load(root / "imported.safetensors")(tokens)
    assert torch.allclose(out, torch.load(root / "dcp-out-0.pt", weights_only=True), rtol=0, atol=1e-6)
    assert elapsed < DEADLINE_S
