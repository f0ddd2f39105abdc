"""Lockfile enforcement at load time (placeholder until the lockfile lands: no lock, nothing checked)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def enforce_lock(path: str | os.PathLike[str], lock: Any = None) -> Iterator[Any]:
    yield None
