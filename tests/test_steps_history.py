"""Steps see history, not today's core: changing the core's defaults leaves every step's plan unchanged."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import sys
from pathlib import Path

import pytest
from legacy_fixtures import all_fixtures

import xtf_core.model.layer_plan as layer_plan
from xtf_core.chain import default_chain
from xtf_core.chain.plan import plan_steps
from xtf_core.checkpoint.stamp import Stamp, current_stamp
from xtf_core.errors import XtfError

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def test_no_step_module_imports_the_model_core() -> None:
    offenders = []
    for path in sorted(MIGRATIONS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {name}" for name in names if name.startswith("xtf_core.model")]
    assert not offenders, f"steps must not read the live core: {offenders}"


def _plans() -> dict[str, list[tuple[str, list[str]]]]:
    """For every fixture of the corpus: each step's ops up to the installed release and back down."""
    chain = default_chain()
    plans: dict[str, list[tuple[str, list[str]]]] = {}
    for fixture in all_fixtures():
        if fixture.refused:
            continue
        source = Stamp("x-transformers", fixture.release)
        try:
            up = plan_steps(chain.route(source, current_stamp()), fixture.config)
            spec_now = up[-1].spec_after if up else fixture.config
            down = plan_steps(chain.route(current_stamp(), source), spec_now)
        except XtfError as exc:  # a refusal is part of the plan too
            plans[fixture.id] = [("refused", [str(exc)])]
            continue
        plans[fixture.id] = [(p.step.id, [op.describe() for op in p.ops]) for p in up + down]
    return plans


def test_changing_core_defaults_leaves_every_step_plan_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _plans()
    assert len(before) > 100

    # a later core that builds post-norm stacks by default, in another block order, with no final norm
    changed = dataclasses.make_dataclass(
        "LayerOptions",
        [
            ("pre_norm", bool, dataclasses.field(default=False)),
            ("pre_norm_has_final_norm", bool, dataclasses.field(default=False)),
        ],
        bases=(layer_plan.LayerOptions,),
    )
    monkeypatch.setattr(layer_plan, "LayerOptions", changed)
    monkeypatch.setattr(layer_plan, "layer_types_for", lambda o: ("f", "a") * (o.depth or 1))
    try:
        _reimport_steps()  # the steps as a fresh process with that core would import them
        assert _plans() == before
    finally:
        monkeypatch.undo()
        _reimport_steps()


def _reimport_steps() -> None:
    names = sorted(n for n in sys.modules if n == "xtf_migrations" or n.startswith("xtf_migrations."))
    # shared modules first, so the steps bind to the re-imported ones
    for name in sorted(names, key=lambda n: (not n.split(".")[-1].startswith("_"), n)):
        importlib.reload(sys.modules[name])
    from xtf_core.chain import graph

    graph._chain_for.cache_clear()
