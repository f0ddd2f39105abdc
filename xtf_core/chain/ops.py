"""Tensor ops: small immutable declarations, each with a reverse (or a stated reason it has none).

Names are patterns: `*` matches within one dotted segment (`layers.*.weight`), `**` matches across dots.
The target pattern reuses the source's wildcards in order. Ops rewrite a `Workspace` of lazy tensor nodes,
so the same declarations drive an in-memory load, a streaming file rewrite and a dry-run plan.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from xtf_core.chain.tensors import Computed, DroppedTensor, Filled, StoredBytes, TensorNode, Workspace
from xtf_core.checkpoint.header import DTYPE_SIZES
from xtf_core.errors import IrreversibleStepError, MigrationError

_WILDCARD = re.compile(r"\*\*|\*")


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> tuple[re.Pattern, tuple[str, ...]]:
    parts, wildcards, last = [], [], 0
    for found in _WILDCARD.finditer(pattern):
        parts.append(re.escape(pattern[last : found.start()]))
        parts.append("(.+)" if found.group() == "**" else "([^.]+)")
        wildcards.append(found.group())
        last = found.end()
    parts.append(re.escape(pattern[last:]))
    return re.compile("".join(parts)), tuple(wildcards)


def wildcards_of(pattern: str) -> tuple[str, ...]:
    return _compile(pattern)[1]


def match_name(pattern: str, name: str) -> tuple[str, ...] | None:
    """The wildcard captures if `name` matches `pattern` in full, else None."""
    found = _compile(pattern)[0].fullmatch(name)
    return found.groups() if found else None


def format_name(pattern: str, captures: Sequence[str]) -> str:
    values = iter(captures)
    return _WILDCARD.sub(lambda _: next(values), pattern)


def _same_wildcards(op: str, patterns: Sequence[str]) -> None:
    signatures = {wildcards_of(pattern) for pattern in patterns}
    if len(signatures) > 1:
        raise MigrationError(f"{op}: patterns {list(patterns)} must use the same wildcards in the same order")


class Op:
    """Base class: `apply` rewrites a workspace; `reverse()` returns the op that undoes it."""

    irreversible_reason: str | None = None

    def apply(self, ws: Workspace) -> None:
        raise NotImplementedError

    def reverse(self) -> Op:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def rename(self, name: str) -> str | None:
        """The new name if this op renames `name` (used for names outside the tensor table, e.g. ties)."""
        return None

    def _refuse_reverse(self) -> IrreversibleStepError:
        return IrreversibleStepError(f"{self.describe()} cannot be reversed: {self.irreversible_reason}")


def _matches(ws: Workspace, pattern: str, op: Op) -> list[tuple[str, tuple[str, ...]]]:
    found = [(name, caps) for name in ws.tensors if (caps := match_name(pattern, name)) is not None]
    if not found and not wildcards_of(pattern):
        raise MigrationError(
            f"step {ws.step}: {op.describe()}: no tensor named {pattern!r} among {len(ws.tensors)} tensors; "
            "the checkpoint does not have the layout this step expects"
        )
    return found


def _refuse_existing(ws: Workspace, names: Sequence[str], op: Op, replacing: Sequence[str] = ()) -> None:
    clashes = [name for name in names if name in ws.tensors and name not in replacing]
    if clashes:
        raise MigrationError(f"step {ws.step}: {op.describe()}: target {clashes} already exist(s)")


@dataclass(frozen=True)
class Rename(Op):
    """Rename every tensor matching `source` to `target` (wildcards, or a regex and a re.sub template)."""

    source: str
    target: str
    regex: bool = False
    reverse_source: str | None = None
    reverse_target: str | None = None

    def __post_init__(self) -> None:
        if not self.regex:
            _same_wildcards("Rename", [self.source, self.target])

    @property
    def irreversible_reason(self) -> str | None:  # type: ignore[override]
        if self.regex and (self.reverse_source is None or self.reverse_target is None):
            return "a regex rename needs reverse_source and reverse_target to be undone"
        return None

    def rename(self, name: str) -> str | None:
        if self.regex:
            found = re.fullmatch(self.source, name)
            return found.expand(self.target) if found else None
        captures = match_name(self.source, name)
        return None if captures is None else format_name(self.target, captures)

    def apply(self, ws: Workspace) -> None:
        mapping = {name: new for name in ws.tensors if (new := self.rename(name)) is not None and new != name}
        if not mapping and not self.regex and not wildcards_of(self.source) and self.source not in ws.tensors:
            _matches(ws, self.source, self)
        targets = list(mapping.values())
        duplicates = sorted({name for name in targets if targets.count(name) > 1})
        if duplicates:
            raise MigrationError(f"step {ws.step}: {self.describe()}: several tensors become {duplicates}")
        _refuse_existing(ws, targets, self, replacing=list(mapping))
        ws.tensors = {mapping.get(name, name): node for name, node in ws.tensors.items()}

    def reverse(self) -> Rename:
        if self.irreversible_reason:
            raise self._refuse_reverse()
        if self.regex:
            return Rename(self.reverse_source, self.reverse_target, True, self.source, self.target)
        return Rename(self.target, self.source)

    def describe(self) -> str:
        return f"Rename({self.source!r} -> {self.target!r})"


def _narrow(dim: int, start: int, length: int, tensor):
    return tensor.narrow(dim, start, length).contiguous()


def _cat(dim: int, *tensors):
    import torch

    return torch.cat(tensors, dim=dim)


def _normalise_dim(dim: int, rank: int, op: Op, name: str) -> int:
    if not -rank <= dim < rank:
        raise MigrationError(f"{op.describe()}: dim {dim} is out of range for {name!r} of rank {rank}")
    return dim % rank


@dataclass(frozen=True)
class Split(Op):
    """Split one tensor along `dim` into `targets` (equal parts, or the declared `sizes`)."""

    source: str
    targets: tuple[str, ...]
    dim: int = 0
    sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.sizes is not None:
            object.__setattr__(self, "sizes", tuple(self.sizes))
            if len(self.sizes) != len(self.targets):
                raise MigrationError(f"{self.describe()}: {len(self.targets)} targets but sizes {self.sizes}")
        _same_wildcards("Split", [self.source, *self.targets])

    def _sizes(self, ws: Workspace, name: str, length: int) -> tuple[int, ...]:
        count = len(self.targets)
        if self.sizes is None and length % count == 0:
            return (length // count,) * count
        if self.sizes is not None and sum(self.sizes) == length:
            return self.sizes
        wanted = f"sizes {self.sizes}" if self.sizes else f"{count} equal parts"
        raise MigrationError(
            f"step {ws.step}: {self.describe()}: {name!r} has {length} along dim {self.dim}, not {wanted}"
        )

    def apply(self, ws: Workspace) -> None:
        for name, captures in _matches(ws, self.source, self):
            node = ws.tensors[name]
            dim = _normalise_dim(self.dim, len(node.shape), self, name)
            names = [format_name(target, captures) for target in self.targets]
            _refuse_existing(ws, names, self, replacing=[name])
            contiguous_slices = isinstance(node, StoredBytes) and all(size == 1 for size in node.shape[:dim])
            row_bytes = math.prod(node.shape[dim + 1 :]) * DTYPE_SIZES[node.dtype]
            outputs: dict[str, TensorNode] = {}
            start = 0
            for target, length in zip(names, self._sizes(ws, name, node.shape[dim])):
                shape = node.shape[:dim] + (length,) + node.shape[dim + 1 :]
                if contiguous_slices:
                    offset = node.offset + start * row_bytes
                    outputs[target] = StoredBytes(node.dtype, shape, node.source, offset, node.origin)
                else:
                    fn = functools.partial(_narrow, dim, start, length)
                    outputs[target] = Computed(
                        node.dtype,
                        shape,
                        (node,),
                        fn,
                        f"split {name}",
                        kind="narrow",
                        args=(dim, start, length),
                    )
                start += length
            ws.replace(name, [name], outputs)

    def reverse(self) -> Merge:
        return Merge(self.targets, self.source, self.dim, self.sizes)

    def describe(self) -> str:
        return f"Split({self.source!r} -> {list(self.targets)}, dim={self.dim})"


@dataclass(frozen=True)
class Merge(Op):
    """Concatenate `sources` along `dim` into one tensor (equal sizes unless `sizes` are declared)."""

    sources: tuple[str, ...]
    target: str
    dim: int = 0
    sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        if self.sizes is not None:
            object.__setattr__(self, "sizes", tuple(self.sizes))
        _same_wildcards("Merge", [*self.sources, self.target])

    def apply(self, ws: Workspace) -> None:
        for first, captures in _matches(ws, self.sources[0], self):
            names = [format_name(source, captures) for source in self.sources]
            missing = [name for name in names if name not in ws.tensors]
            if missing:
                raise MigrationError(
                    f"step {ws.step}: {self.describe()}: {missing} missing (found {first!r})"
                )
            nodes = [ws.tensors[name] for name in names]
            dim = _normalise_dim(self.dim, len(nodes[0].shape), self, first)
            lengths = tuple(node.shape[dim] for node in nodes)
            rest = {node.shape[:dim] + node.shape[dim + 1 :] for node in nodes}
            if len({node.dtype for node in nodes}) > 1 or len(rest) > 1:
                shapes = {name: f"{node.dtype}{list(node.shape)}" for name, node in zip(names, nodes)}
                raise MigrationError(f"step {ws.step}: {self.describe()}: cannot concatenate {shapes}")
            wanted = self.sizes or (lengths[0],) * len(lengths)
            if lengths != wanted:
                raise MigrationError(
                    f"step {ws.step}: {self.describe()}: sizes along dim {self.dim} are {lengths}, "
                    f"expected {wanted}; declare sizes= so the merge can be split back"
                )
            target = format_name(self.target, captures)
            _refuse_existing(ws, [target], self, replacing=names)
            shape = nodes[0].shape[:dim] + (sum(lengths),) + nodes[0].shape[dim + 1 :]
            fn = functools.partial(_cat, dim)
            merged = Computed(
                nodes[0].dtype, shape, tuple(nodes), fn, f"merge {names}", kind="cat", args=(dim,)
            )
            ws.replace(first, names, {target: merged})

    def reverse(self) -> Split:
        return Split(self.target, self.sources, self.dim, self.sizes)

    def describe(self) -> str:
        return f"Merge({list(self.sources)} -> {self.target!r}, dim={self.dim})"


def _reshape(shape: tuple[int, ...], tensor):
    return tensor.reshape(shape)


@dataclass(frozen=True)
class Reshape(Op):
    """Give tensors of shape `from_shape` the shape `to_shape` (same element count, same C-order bytes)."""

    pattern: str
    from_shape: tuple[int, ...]
    to_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "from_shape", tuple(self.from_shape))
        object.__setattr__(self, "to_shape", tuple(self.to_shape))
        if math.prod(self.from_shape) != math.prod(self.to_shape):
            raise MigrationError(f"{self.describe()}: element counts differ")

    def apply(self, ws: Workspace) -> None:
        for name, _ in _matches(ws, self.pattern, self):
            node = ws.tensors[name]
            if node.shape != self.from_shape:
                raise MigrationError(
                    f"step {ws.step}: {self.describe()}: {name!r} has shape {list(node.shape)}, "
                    f"expected {list(self.from_shape)}"
                )
            if isinstance(node, StoredBytes):
                reshaped: TensorNode = StoredBytes(
                    node.dtype, self.to_shape, node.source, node.offset, node.origin
                )
            else:
                fn = functools.partial(_reshape, self.to_shape)
                reshaped = Computed(
                    node.dtype,
                    self.to_shape,
                    (node,),
                    fn,
                    f"reshape {name}",
                    kind="reshape",
                    args=(self.to_shape,),
                )
            ws.tensors[name] = reshaped

    def reverse(self) -> Reshape:
        return Reshape(self.pattern, self.to_shape, self.from_shape)

    def describe(self) -> str:
        return f"Reshape({self.pattern!r} {list(self.from_shape)} -> {list(self.to_shape)})"


def _transpose(dim0: int, dim1: int, tensor):
    return tensor.transpose(dim0, dim1).contiguous()


@dataclass(frozen=True)
class Transpose(Op):
    """Swap two dimensions of every matching tensor (its own reverse)."""

    pattern: str
    dim0: int = 0
    dim1: int = 1

    def apply(self, ws: Workspace) -> None:
        for name, _ in _matches(ws, self.pattern, self):
            node = ws.tensors[name]
            dim0 = _normalise_dim(self.dim0, len(node.shape), self, name)
            dim1 = _normalise_dim(self.dim1, len(node.shape), self, name)
            shape = list(node.shape)
            shape[dim0], shape[dim1] = shape[dim1], shape[dim0]
            fn = functools.partial(_transpose, dim0, dim1)
            ws.tensors[name] = Computed(
                node.dtype,
                tuple(shape),
                (node,),
                fn,
                f"transpose {name}",
                kind="transpose",
                args=(dim0, dim1),
            )

    def reverse(self) -> Transpose:
        return self

    def describe(self) -> str:
        return f"Transpose({self.pattern!r}, {self.dim0}, {self.dim1})"


LIKE = "like:"


def _resolve_dtype(ws: Workspace, dtype: str | None, op: Op) -> str | None:
    """A declared dtype, where `like:<name>` means "the dtype of tensor <name>" (so bf16 files stay bf16)."""
    if dtype is None or not dtype.startswith(LIKE):
        return dtype
    other = ws.tensors.get(dtype[len(LIKE) :])
    if other is None:
        raise MigrationError(
            f"step {ws.step}: {op.describe()}: no tensor {dtype[len(LIKE) :]!r} to take the dtype from"
        )
    return other.dtype


@dataclass(frozen=True)
class Drop(Op):
    """Remove tensors that hold `fill` everywhere; any other value is refused before anything is written.

    Reversible when the name is literal and `shape` and `dtype` are declared: the reverse adds it back.
    `unused=True` declares a tensor the model never reads (a dead head): it is dropped whatever it holds.
    """

    pattern: str
    fill: float = 0.0
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    unused: bool = False

    def __post_init__(self) -> None:
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def irreversible_reason(self) -> str | None:  # type: ignore[override]
        if wildcards_of(self.pattern):
            return "a wildcard drop cannot say which tensors to add back"
        if self.shape is None or self.dtype is None:
            return "the drop declares no shape and dtype to restore the tensor with"
        return None

    def apply(self, ws: Workspace) -> None:
        for name, _ in _matches(ws, self.pattern, self):
            node = ws.tensors.pop(name)
            dtype = _resolve_dtype(ws, self.dtype, self)
            declared = (dtype or node.dtype, self.shape if self.shape is not None else node.shape)
            if declared != (node.dtype, node.shape):
                raise MigrationError(
                    f"step {ws.step}: {self.describe()}: {name!r} is {node.dtype}{list(node.shape)}, "
                    f"declared {declared[0]}{list(declared[1])}"
                )
            if not self.unused:
                ws.drops.append(DroppedTensor(name, node, self.fill, ws.step))

    def reverse(self) -> Add:
        if self.irreversible_reason:
            raise self._refuse_reverse()
        return Add(self.pattern, self.shape, self.dtype, self.fill)

    def describe(self) -> str:
        return f"Drop({self.pattern!r}{', unused' if self.unused else ''})"


@dataclass(frozen=True)
class Add(Op):
    """Add a new tensor filled with a stated default value (appended after the existing tensors)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    fill: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        if wildcards_of(self.name):
            raise MigrationError(f"{self.describe()}: Add needs a literal tensor name")
        if self.dtype not in DTYPE_SIZES and not self.dtype.startswith(LIKE):
            raise MigrationError(f"{self.describe()}: unknown dtype {self.dtype!r}")

    def apply(self, ws: Workspace) -> None:
        _refuse_existing(ws, [self.name], self)
        ws.tensors[self.name] = Filled(_resolve_dtype(ws, self.dtype, self), self.shape, self.fill)

    def reverse(self) -> Drop:
        return Drop(self.name, self.fill, self.shape, self.dtype)

    def describe(self) -> str:
        return f"Add({self.name!r}, {self.dtype}{list(self.shape)}, fill={self.fill})"


def _checked_transform(fn: Callable, what: str, tensor):
    result = fn(tensor)
    if tuple(result.shape) != tuple(tensor.shape) or result.dtype != tensor.dtype:
        raise MigrationError(
            f"{what}: function returned {result.dtype}{list(result.shape)} for "
            f"{tensor.dtype}{list(tensor.shape)}; a value transform keeps shape and dtype"
        )
    return result


@dataclass(frozen=True)
class ValueTransform(Op):
    """Rewrite the values of matching tensors with code (`forward`, and `backward` to undo it).

    The function receives and returns a tensor of the same shape and dtype. `elementwise` declares that each
    output element depends only on the same input element (so the op may be applied chunk by chunk).
    """

    pattern: str
    forward: Callable
    backward: Callable | None = None
    elementwise: bool = True
    description: str = ""

    @property
    def irreversible_reason(self) -> str | None:  # type: ignore[override]
        return None if self.backward is not None else "the value transform declares no backward function"

    def apply(self, ws: Workspace) -> None:
        for name, _ in _matches(ws, self.pattern, self):
            node = ws.tensors[name]
            what = f"step {ws.step}: {self.describe()} on {name!r}"
            fn = functools.partial(_checked_transform, self.forward, what)
            label = f"transform {name}"
            ws.tensors[name] = Computed(
                node.dtype, node.shape, (node,), fn, label, self.elementwise, kind="transform", args=(what,)
            )

    def reverse(self) -> ValueTransform:
        if self.backward is None:
            raise self._refuse_reverse()
        return ValueTransform(self.pattern, self.backward, self.forward, self.elementwise, self.description)

    def describe(self) -> str:
        return f"ValueTransform({self.pattern!r}{': ' + self.description if self.description else ''})"
