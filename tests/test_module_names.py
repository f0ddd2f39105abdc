"""Modules say their one job and are told apart by name: every module of the repo (tests aside) opens with a
docstring whose first line is a sentence, and no module's name is another's in the same folder plus a
suffix (as `lock`, `lockfile` and `locking` once were)."""

from __future__ import annotations

import ast
import subprocess
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    paths = [ROOT / name for name in listed if not name.startswith("tests/")]
    return [path for path in paths if path.is_file()]


def test_every_module_opens_with_its_job() -> None:
    missing = []
    for path in _modules():
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        first = (docstring or "").strip().splitlines()[0] if docstring and docstring.strip() else ""
        if len(first.split()) < 4:  # a sentence, not a word or a title
            missing.append(f"{path.relative_to(ROOT)}: {first!r}")
    assert not missing, "modules whose docstring does not open with what they do:\n" + "\n".join(missing)


def test_no_module_name_is_another_plus_a_suffix() -> None:
    by_folder: dict[Path, list[str]] = defaultdict(list)
    for path in _modules():
        if path.stem != "__init__":
            by_folder[path.parent].append(path.stem)
    pairs = [
        f"{folder.relative_to(ROOT)}: {short}.py and {long}.py"
        for folder, names in by_folder.items()
        for short in names
        for long in names
        if long != short and long.startswith(short)
    ]
    assert not pairs, "names that differ only by a suffix:\n" + "\n".join(sorted(pairs))
    assert sum(len(names) for names in by_folder.values()) > 100  # the walk saw the repo
