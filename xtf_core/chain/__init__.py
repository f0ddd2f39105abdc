"""The migration engine: ops, steps, the chain, planning, streaming file rewrites and in-memory migration.

Importing this package does not import torch; torch loads only when a tensor must be decoded.
"""

from xtf_core.chain.graph import Chain, Route, default_chain, route
from xtf_core.chain.memory import migrate_in_memory
from xtf_core.chain.ops import Add, Drop, Merge, Op, Rename, Reshape, Split, Transpose, ValueTransform
from xtf_core.chain.plan import FilePlan, plan_file
from xtf_core.chain.step import Step
from xtf_core.chain.stream import migrate_file

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
