"""The chain checksum a lockfile pins: edits and out-of-order inserts are named, appended steps are not."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from xtf_core.chain import default_chain
from xtf_core.chain.digest import chain_changes, chain_sum
from xtf_core.chain.graph import Chain
from xtf_core.testing import rename_step_source, write_steps_package


@pytest.fixture
def steps_root(tmp_path: Path):
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))


def _package(root: Path, modules: dict[str, tuple[str, str]]) -> Chain:
    name = f"digest_steps_{uuid.uuid4().hex[:8]}"  # a fresh package each time: no import caching
    write_steps_package(
        root,
        name,
        {m: rename_step_source(rev, down, f"{m}.*", f"{m}_new.*") for m, (rev, down) in modules.items()},
    )
    return Chain.discover(name, installed="xtf==9.0.0")


BASE = {"s1": ("xtf==0.2.0", "xtf==0.1.0"), "s2": ("xtf==0.3.0", "xtf==0.2.0")}


def test_unchanged_chain_has_no_changes(steps_root: Path) -> None:
    first = chain_sum(_package(steps_root, BASE))
    again = chain_sum(_package(steps_root, BASE))
    assert first.total == again.total and first.total.startswith("sha256:")
    assert chain_changes(first.steps, again) == []


def test_an_edited_step_is_named(steps_root: Path) -> None:
    pinned = chain_sum(_package(steps_root, BASE))
    edited = _package(steps_root, BASE)
    module = Path(sys.modules[edited.steps[0].module].__file__)
    module.write_text(module.read_text() + "\n# edited after release\n")
    now = chain_sum(edited)
    assert now.total != pinned.total
    assert chain_changes(pinned.steps, now) == ["step xtf==0.2.0 was edited after it was locked"]


def test_a_step_inserted_below_locked_steps_is_named(steps_root: Path) -> None:
    pinned = chain_sum(_package(steps_root, BASE))
    inserted = {
        "s0": ("xtf==0.1.5", "xtf==0.1.0"),
        "s1": ("xtf==0.2.0", "xtf==0.1.5"),
        "s2": ("xtf==0.3.0", "xtf==0.2.0"),
    }
    problems = chain_changes(pinned.steps, chain_sum(_package(steps_root, inserted)))
    assert "step xtf==0.1.5 was inserted out of order, below locked steps" in problems
    # s1's file changed too (its down_revision), so it is named as edited
    assert "step xtf==0.2.0 was edited after it was locked" in problems


def test_steps_appended_above_and_removed_steps(steps_root: Path) -> None:
    pinned = chain_sum(_package(steps_root, BASE))
    appended = {**BASE, "s3": ("xtf==0.4.0", "xtf==0.3.0")}
    assert chain_changes(pinned.steps, chain_sum(_package(steps_root, appended))) == []
    shorter = {"s1": BASE["s1"]}
    assert chain_changes(pinned.steps, chain_sum(_package(steps_root, shorter))) == [
        "step xtf==0.3.0 was removed from the installed chain"
    ]


def test_the_installed_chain_has_a_checksum_per_step() -> None:
    chain = default_chain()
    total = chain_sum(chain)
    assert [step_id for step_id, _ in total.steps] == [step.id for step in chain.steps]
