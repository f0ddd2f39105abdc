"""Tensors as lazy descriptions: what ops rewrite, so a plan can be made from a header alone.

A node knows its dtype and shape. `StoredBytes` is a byte range of a source file (renames, reshapes and
dim-0 slices keep it, so the bytes are copied without decoding); `GivenTensor` wraps a tensor already in
memory; `Filled` is a constant; `Computed` applies a function to other nodes. Torch is needed only when a
node is realised.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xtf_core.checkpoint.header import DTYPE_SIZES


@dataclass(frozen=True, eq=False)
class TensorNode:
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


@dataclass(frozen=True, eq=False)
class StoredBytes(TensorNode):
    """Bytes at `offset` in shard `source`, first stored as tensor `origin`."""

    source: str
    offset: int
    origin: str


@dataclass(frozen=True, eq=False)
class GivenTensor(TensorNode):
    value: Any

    @classmethod
    def of(cls, tensor: Any) -> GivenTensor:
        from xtf_core.checkpoint.io import dtype_code

        return cls(dtype=dtype_code(tensor.dtype), shape=tuple(tensor.shape), value=tensor)


@dataclass(frozen=True, eq=False)
class Filled(TensorNode):
    fill: float


@dataclass(frozen=True, eq=False)
class Computed(TensorNode):
    """A tensor computed from `inputs` by `fn`. `kind` and `args` say what `fn` does, for readers that must
    compute slices instead of whole tensors (a sharded load): "narrow" (dim, start, length), "cat" (dim,),
    "transpose" (dim0, dim1), "reshape" (shape,), "transform" (description,), or "code" (opaque)."""

    inputs: tuple[TensorNode, ...]
    fn: Callable[..., Any]
    label: str
    elementwise: bool = False  # fn maps each element independently, so it may run chunk by chunk
    kind: str = "code"
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class DroppedTensor:
    """A tensor a Drop removed; it must equal `fill` everywhere, which is checked before anything is written."""

    name: str
    node: TensorNode
    fill: float
    step: str = ""


@dataclass
class Workspace:
    """The tensors between ops (insertion order is file order) and the drops still to be checked."""

    tensors: dict[str, TensorNode]
    drops: list[DroppedTensor] = field(default_factory=list)
    step: str = ""

    def replace(self, position_of: str, removed: list[str], added: dict[str, TensorNode]) -> None:
        """Remove `removed` and insert `added` where `position_of` was, keeping every other tensor in place."""
        rebuilt: dict[str, TensorNode] = {}
        for name, node in self.tensors.items():
            if name == position_of:
                rebuilt.update(added)
            if name not in removed:
                rebuilt[name] = node
        self.tensors = rebuilt


def origin_shard(node: TensorNode) -> str | None:
    """The shard the node's bytes (or its first stored input) come from."""
    if isinstance(node, StoredBytes):
        return node.source
    if isinstance(node, Computed):
        for item in node.inputs:
            shard = origin_shard(item)
            if shard is not None:
                return shard
    return None


class Realiser:
    """Turns nodes into tensors, reading stored bytes through `read_stored` (with a one-entry cache, so a
    tensor split into several outputs is read once per output group)."""

    def __init__(self, read_stored: Callable[[StoredBytes], Any] | None = None):
        self._read_stored = read_stored
        self._cached: tuple[StoredBytes, Any] | None = None

    def __call__(self, node: TensorNode) -> Any:
        if isinstance(node, GivenTensor):
            return node.value
        if isinstance(node, StoredBytes):
            if self._read_stored is None:
                raise TypeError("stored tensor bytes need a reader")
            if self._cached is None or self._cached[0] is not node:
                self._cached = None
                self._cached = (node, self._read_stored(node))
            return self._cached[1]
        if isinstance(node, Filled):
            import torch

            from xtf_core.checkpoint.io import torch_dtype

            return torch.full(node.shape, node.fill, dtype=torch_dtype(node.dtype))
        if isinstance(node, Computed):
            return node.fn(*(self(item) for item in node.inputs))
        raise TypeError(f"unknown tensor node {type(node).__name__}")


def check_drops(drops: list[DroppedTensor], realise: Callable[[TensorNode], Any]) -> None:
    """Refuse, naming every offender, if a dropped tensor is not its declared fill value everywhere."""
    if not drops:
        return
    import torch

    from xtf_core.errors import MigrationError

    offenders = []
    for dropped in drops:
        tensor = realise(dropped.node)
        if tensor.numel() == 0:
            continue
        deviation = (tensor.to(torch.float64) - dropped.fill).abs().max().item()
        if deviation != 0.0:  # NaN counts as non-zero
            what = "max abs value" if dropped.fill == 0 else f"max abs difference from {dropped.fill}"
            offenders.append(f"{dropped.name!r} ({what} {deviation:.6g}, step {dropped.step})")
    if offenders:
        raise MigrationError(
            "refusing to drop " + ", ".join(offenders) + ": never drop a non-zero tensor silently; "
            "the step must transform or keep it (or declare the value it always has)"
        )
