"""Helpers for testing migration steps and the engine (not used by xtf itself): stamped files from a dict,
raw tensor bytes, a round trip through one step, and throwaway steps packages."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xtf_core.chain.graph import Chain
from xtf_core.chain.memory import migrate_in_memory
from xtf_core.chain.step import Step
from xtf_core.checkpoint.header import read_header
from xtf_core.checkpoint.stamp import Stamp, stamped_metadata


def write_checkpoint(
    path: str | os.PathLike,
    tensors: Mapping[str, Any],
    stamp: Stamp | str,
    spec: Mapping,
    extra_metadata: Mapping[str, str] | None = None,
) -> None:
    """Save `tensors` with safetensors and the stamp keys for `stamp` and `spec`."""
    from safetensors.torch import save_file

    metadata = stamped_metadata(dict(extra_metadata or {}), Stamp.coerce(stamp), spec)
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(path), metadata)


def raw_tensor_bytes(path: str | os.PathLike, name: str) -> bytes:
    """The undecoded bytes of one tensor, read through the header."""
    header = read_header(path)
    entry = header.tensors[name]
    with open(path, "rb") as handle:
        handle.seek(header.file_offset(entry))
        return handle.read(entry.nbytes)


def round_trip(step: Step, tensors: Mapping[str, Any], spec: dict) -> tuple[dict, dict, dict, dict]:
    """Upgrade through `step`, then downgrade back: (upgraded, upgraded spec, restored, restored spec).

    The step runs in a chain of its own whose newest layout is the step's revision, so any step of the
    installed package can be tested, whatever xtf release runs the test."""
    chain = Chain([step], installed=step.revision)
    upgraded, new_spec, _ = migrate_in_memory(
        dict(tensors), spec, step.down_revision, step.revision, chain=chain
    )
    restored, old_spec, _ = migrate_in_memory(
        dict(upgraded), new_spec, step.revision, step.down_revision, chain=chain
    )
    return upgraded, new_spec, restored, old_spec


RENAME_STEP_TEMPLATE = '''"""Rename {source} to {target} (synthetic step for tests and benchmarks)."""

from xtf_core.chain import Rename

revision = "{revision}"
down_revision = "{down_revision}"
reversible = True

ops = [Rename("{source}", "{target}")]
'''


def write_steps_package(root: str | os.PathLike, package: str, modules: Mapping[str, str]) -> Path:
    """Create importable package `package` under `root` holding the given step modules (name -> source).

    Point a process at it with PYTHONPATH=root and XTF_MIGRATIONS_PACKAGE=package.
    """
    folder = Path(root) / package
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(f'"""Steps of {package}."""\n', encoding="utf-8")
    for name, source in modules.items():
        (folder / f"{name}.py").write_text(source, encoding="utf-8")
    return folder


def rename_step_source(revision: str, down_revision: str, source: str, target: str) -> str:
    return RENAME_STEP_TEMPLATE.format(
        revision=revision, down_revision=down_revision, source=source, target=target
    )
