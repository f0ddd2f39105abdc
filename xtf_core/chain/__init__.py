"""The migration engine: ops, steps, the chain, planning, streaming file rewrites and in-memory migration.

Importing this package does not import torch; torch loads only when a tensor must be decoded.
"""

import importlib
from typing import Any

# Loaded on first use, so a step module importing `Rename` (or `xtf inspect` planning from a header) pays
# only for the pieces it touches.
_LAZY = {
    "Chain": "graph",
    "Route": "graph",
    "default_chain": "graph",
    "route": "graph",
    "migrate_in_memory": "memory",
    "Add": "ops",
    "Drop": "ops",
    "Merge": "ops",
    "Op": "ops",
    "Rename": "ops",
    "Reshape": "ops",
    "Split": "ops",
    "Transpose": "ops",
    "ValueTransform": "ops",
    "FilePlan": "plan",
    "plan_file": "plan",
    "Step": "step",
    "migrate_file": "stream",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xtf_core.chain' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"xtf_core.chain.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "Add",
    "Chain",
    "Drop",
    "FilePlan",
    "Merge",
    "Op",
    "Rename",
    "Reshape",
    "Route",
    "Split",
    "Step",
    "Transpose",
    "ValueTransform",
    "default_chain",
    "migrate_file",
    "migrate_in_memory",
    "plan_file",
    "route",
]
