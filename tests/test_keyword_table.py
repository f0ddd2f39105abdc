"""docs/compatibility.md's table of every x-transformers 2.31.10 constructor keyword agrees with the code.

The keyword list comes from the real classes' signatures (`scripts/keyword_table.py: keywords()`); for each
keyword the table says supported or refused, and building the smallest xtf model with the same plausible
non-default value must raise `UnsupportedOptionError` naming it exactly where the table says `refused`.
The parity half of each `supported` row is checked when the table is generated (and by
`scripts/keyword_table.py --check`); the per-option parity tests live beside the options.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path

import pytest

pytest.importorskip("x_transformers")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("keyword_table", ROOT / "scripts" / "keyword_table.py")
assert _spec is not None and _spec.loader is not None
kt = importlib.util.module_from_spec(_spec)
sys.modules["keyword_table"] = kt  # dataclasses look their module up there
_spec.loader.exec_module(kt)


@pytest.fixture(scope="module")
def table() -> dict[tuple[str, str], str]:
    return kt.parse((ROOT / "docs" / "compatibility.md").read_text())


def test_the_table_lists_every_keyword_of_the_real_signatures(table: dict[tuple[str, str], str]) -> None:
    names = [(k.group, k.name) for k in kt.keywords()]
    assert len(names) > 250
    assert sorted(table) == sorted(names), "re-run scripts/keyword_table.py"


def test_refused_in_the_table_exactly_where_the_code_refuses(table: dict[tuple[str, str], str]) -> None:
    disagree = []
    with contextlib.redirect_stderr(io.StringIO()):
        for keyword in kt.keywords():
            claimed = table.get((keyword.group, keyword.name), "")
            if claimed.startswith("n/a") or kt.plausible_value(keyword) is None:
                continue
            status = kt.xtf_status(keyword)
            if (claimed == "refused") != (status == "refused") or status.startswith("error"):
                disagree.append(f"{keyword.name}: table says {claimed!r}, the code gives {status!r}")
    assert not disagree, "re-run scripts/keyword_table.py; " + "; ".join(disagree)


def test_no_keyword_builds_something_else(table: dict[tuple[str, str], str]) -> None:
    broken = {name: status for name, status in table.items() if status.startswith(("MISMATCH", "ERROR"))}
    assert not broken, f"options that build but compute something else, or fail oddly: {broken}"


def test_at_least_seventy_percent_of_the_valid_keywords_are_supported(
    table: dict[tuple[str, str], str],
) -> None:
    valid = [s for s in table.values() if not s.startswith("n/a")]
    supported = [s for s in valid if s == "supported"]
    assert len(supported) >= 0.7 * len(valid), f"{len(supported)} of {len(valid)} supported"
