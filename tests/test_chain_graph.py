"""The chain graph, in memory: validation errors carry data, routes map stamps to layouts."""

import sys
import textwrap

import pytest

from xtf_core.chain import Chain, Drop, Rename, Step, ValueTransform
from xtf_core.checkpoint.stamp import Stamp
from xtf_core.errors import (
    ChainError,
    CycleError,
    DuplicateStepError,
    IrreversibleStepError,
    MissingParentError,
    MultipleHeadsError,
    VersionError,
)


def step(down, up, doc="Do a thing.", **kwargs):
    return Step(revision=up, down_revision=down, doc=doc, **kwargs)


LINE = [
    step("x-transformers==1.26.0", "x-transformers==1.30.0", "Legacy rename."),
    step("x-transformers==1.30.0", "xtf==0.1.0", "Adopt the xtf layout."),
    step("xtf==0.1.0", "xtf==0.2.0", "Rename out proj.", ops=[Rename("a", "b")]),
    step("xtf==0.2.0", "xtf==0.4.0", "Scale gains.", ops=[ValueTransform("b", lambda t: t * 2)]),
]


def test_steps_are_ordered_by_parent_pointers_not_input_order():
    chain = Chain(reversed(LINE), installed="0.4.0")
    assert [s.id for s in chain.steps] == [s.id for s in LINE]
    assert chain.head == Stamp("xtf", "0.4.0")
    assert str(chain.nodes[0]) == "x-transformers==1.26.0"


def test_duplicate_revision():
    with pytest.raises(DuplicateStepError) as info:
        Chain([*LINE, step("xtf==0.1.0", "xtf==0.2.0", "Other.")])
    assert info.value.revision == "xtf==0.2.0"


def test_gap_names_the_step_and_its_missing_parent():
    with pytest.raises(MissingParentError) as info:
        Chain([LINE[0], LINE[2], LINE[3]])
    assert (info.value.step, info.value.parent) == ("xtf==0.2.0", "xtf==0.1.0")


def test_fork_reports_branch_point_and_children():
    with pytest.raises(MultipleHeadsError) as info:
        Chain([*LINE, step("xtf==0.2.0", "xtf==0.3.0", "Branch.")])
    assert info.value.branch_point == "xtf==0.2.0"
    assert sorted(info.value.children) == ["xtf==0.3.0", "xtf==0.4.0"]


def test_cycle():
    with pytest.raises(CycleError) as info:
        Chain([*LINE[:2], step("xtf==0.2.0", "xtf==0.3.0"), step("xtf==0.3.0", "xtf==0.2.0")])
    assert info.value.revisions == ["xtf==0.2.0", "xtf==0.3.0"]


def test_step_must_move_forward():
    with pytest.raises(ChainError, match="newer than its down_revision"):
        Chain([step("xtf==0.3.0", "xtf==0.2.0")])


def test_file_stamp_maps_to_greatest_node_at_or_below_it():
    chain = Chain(LINE, installed="0.4.2")
    assert chain.node_for(Stamp("xtf", "0.3.9")) == Stamp("xtf", "0.2.0")
    assert chain.node_for(Stamp("x-transformers", "1.29.0")) == Stamp("x-transformers", "1.26.0")
    assert chain.route("xtf==0.2.5").steps == (LINE[3],)
    assert chain.route("xtf==0.4.1").direction == "none"
    assert [s.id for s in chain.route("x-transformers==1.27.1").steps] == [s.id for s in LINE]
    assert [s.id for s in chain.route("x-transformers==1.31.0").steps] == [s.id for s in LINE[1:]]
    with pytest.raises(ChainError, match="oldest x-transformers layout it knows is x-transformers==1.26.0"):
        chain.route("x-transformers==1.0.0")


def test_downgrade_route_and_records():
    chain = Chain(LINE, installed="0.4.0")
    down = chain.route("xtf==0.4.0", "xtf==0.1.0")
    assert down.direction == "downgrade"
    assert [s.id for s in down.steps] == ["xtf==0.4.0", "xtf==0.2.0"]
    assert down.records()[0] == {
        "id": "xtf==0.4.0",
        "from": "xtf==0.4.0",
        "to": "xtf==0.2.0",
        "direction": "downgrade",
    }


def test_newer_than_installed_names_both_versions_and_the_fix():
    chain = Chain(LINE, installed="0.2.0")
    with pytest.raises(
        VersionError, match=r"stamped xtf==0\.4\.0, newer than the installed xtf 0\.2\.0.*upgrade xtf"
    ):
        chain.route("xtf==0.4.0")
    with pytest.raises(VersionError, match="target xtf==0.4.0"):
        chain.route("xtf==0.1.0", "0.4.0")


def test_downgrade_through_declared_irreversible_step_refused_up_front():
    steps = [
        *LINE[:3],
        step("xtf==0.2.0", "xtf==0.4.0", "Fold gains.", irreversible_reason="gains folded into weights"),
    ]
    with pytest.raises(IrreversibleStepError, match="gains folded into weights"):
        Chain(steps, installed="0.4.0").route("xtf==0.4.0", "xtf==0.1.0")


def test_empty_chain_has_one_layout():
    chain = Chain([], installed="0.1.5")
    assert chain.route("xtf==0.1.3").steps == ()
    with pytest.raises(ChainError):
        chain.route("x-transformers==1.2.0")


STEP_FILE = '''
"""Rename {old} to {new}.

Upstream: made necessary by a test.
"""

from xtf_core.chain import Drop, Rename

revision = "{up}"
down_revision = "{down}"
reversible = {reversible}
{reason}


def upgrade_spec(spec):
    return {{**spec, "renamed": True}}


def ops(spec):
    return [Rename("{old}", "{new}")]
'''


def write_package(root, name, steps):
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text('"""Test steps."""\n')
    for index, (down, up, reversible, reason) in enumerate(steps):
        text = STEP_FILE.format(
            old=f"t{index}", new=f"t{index + 1}", up=up, down=down, reversible=reversible, reason=reason
        )
        (package / f"step_{index:03d}.py").write_text(textwrap.dedent(text))
    return package


def test_discovers_step_modules_of_a_package(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_package(
        tmp_path,
        "pkg_good",
        [
            ("xtf==0.0.1", "xtf==0.0.2", True, ""),
            ("xtf==0.0.2", "xtf==0.1.0", False, 'irreversible_reason = "lossy"'),
        ],
    )
    chain = Chain.discover("pkg_good", installed="0.1.0")
    assert [s.summary for s in chain.steps] == ["Rename t0 to t1.", "Rename t1 to t2."]
    assert chain.steps[1].irreversible_reason == "lossy"
    assert chain.steps[0].module == "pkg_good.step_000"
    assert chain.steps[0].upgrade_ops({"class": "X"}) == [Rename("t0", "t1")]
    assert Drop  # the template's import works


def test_step_module_must_declare_reversibility_consistently(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_package(tmp_path, "pkg_bad", [("xtf==0.0.1", "xtf==0.0.2", False, "")])
    with pytest.raises(ChainError, match="irreversible_reason"):
        Chain.discover("pkg_bad")
    sys.modules.pop("pkg_bad", None)


def test_step_declared_reversible_with_an_op_that_cannot_reverse_is_refused(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    package = tmp_path / "pkg_lossy"
    package.mkdir()
    (package / "__init__.py").write_text('"""Test steps."""\n')
    (package / "step_000.py").write_text(
        textwrap.dedent(
            '''
            """Square the gains."""

            from xtf_core.chain import ValueTransform

            revision = "xtf==0.0.2"
            down_revision = "xtf==0.0.1"
            reversible = True

            ops = [ValueTransform("g", forward=lambda t: t * t)]
            '''
        )
    )
    with pytest.raises(ChainError, match=r"declares reversible = True, but ValueTransform\('g'\) cannot"):
        Chain.discover("pkg_lossy")
    sys.modules.pop("pkg_lossy", None)
