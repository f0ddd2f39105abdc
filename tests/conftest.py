"""Shared test settings: one marker, `releases`, for every test that runs real x-transformers releases.

Such a test installs releases from PyPI on first use (network) into `.xt-releases/`, or `$XTF_RELEASES_DIR`
(the test command points it at a user cache), then reuses them.
A module is marked when it uses `xt_releases` (or marks a test itself). `pytest -m "not releases"` leaves
them out; so does `XTF_RELEASE_TESTS=0`. The README's test command runs them; `XTF_RELEASE_TESTS=1` also
runs the extended sweeps over more releases (`test_option_history.py`).
"""

from __future__ import annotations

import os

import pytest

_RELEASE_RUNNERS = ("run_in_release", "ensure_release", "release_env", "release_source")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "releases: runs real x-transformers releases (installed from PyPI once, see tests/xt_releases.py)",
    )


def _uses_releases(item: pytest.Item) -> bool:
    module = getattr(item, "module", None)
    return any(
        getattr(getattr(module, name, None), "__module__", None) == "xt_releases" for name in _RELEASE_RUNNERS
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = os.environ.get("XTF_RELEASE_TESTS") == "0"
    for item in items:
        if _uses_releases(item) and not item.get_closest_marker("releases"):
            item.add_marker(pytest.mark.releases)
        if skip and item.get_closest_marker("releases"):
            item.add_marker(pytest.mark.skip(reason="XTF_RELEASE_TESTS=0: real releases not run"))
