"""What a conversion did, as typed values: each says itself as JSON (`to_json`) and as text (`describe`).

`xtf convert` prints these and nothing else; Python callers read their fields. The JSON documents are
the `xtf convert --json` output, unchanged from the dicts earlier releases returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xtf_core.checkpoint.stamp import describe_ignored


@dataclass(frozen=True)
class ConvertReport:
    """A torch pickle of an x-transformers state dict, written as a stamped safetensors file."""

    source: str
    output: str
    stamp: str
    why: str  # how the release was known: named with --from, or what era detection found
    tensors: int
    state_dict_at: str | None  # where the state dict sat inside the pickle (None: the pickle is it)
    prefix: str  # the model's name prefix inside a bigger state dict ("" for none)
    ignored: list[dict[str, Any]] = field(default_factory=list)  # kwargs the release ignored
    renamed: list[dict[str, Any]] = field(default_factory=list)  # kwargs read under a later name

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "state_dict_at": self.state_dict_at,
            "prefix": self.prefix,
            "stamp": self.stamp,
            "why": self.why,
            "ignored": self.ignored,
            "renamed": self.renamed,
            "tensors": self.tensors,
            "output": self.output,
        }

    def describe(self) -> list[str]:
        lines = [f"{self.source} -> {self.output}: stamped {self.stamp} ({self.why})"]
        if self.prefix:
            lines.append(f"model taken from under the prefix {self.prefix!r}")
        for item in self.renamed:
            lines.append(f"read {item['option']!r} as {' + '.join(item['as'])} (its name in later releases)")
        if self.ignored:
            release = self.stamp.partition("==")[2]
            lines.append(
                f"ignored, as x-transformers {release} did: {describe_ignored(self.ignored)} "
                "(recorded under xtf.ignored)"
            )
        return lines


@dataclass(frozen=True)
class DcpConvertReport:
    """The model tensors of a `torch.distributed.checkpoint` folder, written as a stamped safetensors file."""

    source: str
    output: str
    stamp: str
    tensors: int
    state_dict_at: str  # the group the model's tensors sat under ("<top level>" for none)
    skipped: int  # tensors of other groups (optimizer state, ...), not read

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "state_dict_at": self.state_dict_at,
            "stamp": self.stamp,
            "tensors": self.tensors,
            "skipped": self.skipped,
            "output": self.output,
        }

    def describe(self) -> list[str]:
        return [
            f"{self.source} (DCP, model state at {self.state_dict_at!r}) -> {self.output}: stamped "
            f"{self.stamp}, {self.tensors} tensors ({self.skipped} other tensors not read)"
        ]


@dataclass(frozen=True)
class Placement:
    """Where an export put the model inside a copy of an application pickle (`--into`)."""

    into: str
    state_dict_at: str
    prefix: str
    replaced: int  # tensors under the prefix, replaced
    kept: int  # every other tensor, kept as it was

    def to_json(self) -> dict[str, Any]:
        return {
            "into": self.into,
            "state_dict_at": self.state_dict_at,
            "prefix": self.prefix,
            "replaced": self.replaced,
            "kept": self.kept,
        }


@dataclass(frozen=True)
class ExportReport:
    """A stamped checkpoint written as the plain state dict an x-transformers release loads."""

    source: str
    output: str
    config: str  # the constructor call for that release, as JSON, beside the output
    from_stamp: str
    to_stamp: str
    steps: list[str | None] = field(default_factory=list)  # migration steps applied on the way
    placement: Placement | None = None

    def to_json(self) -> dict[str, Any]:
        document = {
            "source": self.source,
            "from": self.from_stamp,
            "to": self.to_stamp,
            "steps": self.steps,
            "output": self.output,
            "config": self.config,
        }
        return {**document, **(self.placement.to_json() if self.placement else {})}

    def describe(self) -> list[str]:
        lines = [
            f"{self.source} ({self.from_stamp}) -> {self.output} for {self.to_stamp}; config in {self.config}"
        ]
        if self.placement is not None:
            placed = self.placement
            lines.append(
                f"{placed.replaced} tensors under {placed.prefix!r} replaced in a copy of {placed.into} "
                f"({placed.state_dict_at}); {placed.kept} other tensors and every other entry kept"
            )
        return lines
