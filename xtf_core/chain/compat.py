"""What each release can read: the stamps that share a layout, and how a release reads a file of any stamp.

Derived from the chain alone (no file is read): `xtf compat` prints it, and a lockfile's pin uses it to
say which stamps every release it allows can load.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from xtf_core.checkpoint.stamp import LINEAGES, Stamp
from xtf_core.errors import XtfError


def _between(low: Stamp, high: Stamp) -> list[str]:
    """Requirement strings for every stamp s with low <= s <= high, one per lineage."""
    out = []
    for lineage in LINEAGES[LINEAGES.index(low.lineage) : LINEAGES.index(high.lineage) + 1]:
        clauses = []
        if lineage == low.lineage:
            clauses.append(f">={low.version}")
        if lineage == high.lineage:
            clauses.append(f"<={high.version}")
        out.append(lineage + ",".join(clauses))
    return out


def layout_ranges(chain) -> dict[Stamp, str]:
    """Each chain node -> the stamps that share its layout, as a requirement string."""
    ranges = {}
    for i, node in enumerate(chain.nodes):
        following = chain.nodes[i + 1] if i + 1 < len(chain.nodes) else None
        upper = (
            f",<{following.version}" if following is not None and following.lineage == node.lineage else ""
        )
        ranges[node] = f"{node.lineage}>={node.version}{upper}"
    return ranges


def stamp_matches(stamp: Stamp, ranges: Sequence[str]) -> bool:
    """Whether `stamp` is in one of the requirement strings (as written in a lockfile's `stamps`)."""
    for text in ranges:
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) == stamp.lineage and requirement.specifier.contains(
            stamp.version, prereleases=True
        ):
            return True
    return False


def reading(library: Stamp, stamp: Stamp, chain) -> tuple[str, str]:
    """How release `library` can read a file stamped `stamp`: (kind, detail), kind one of
    `direct` (same layout), `at load` (an xtf release migrates it in memory when loading),
    `migrate` (`xtf migrate --to` first, with the installed xtf), `no` (detail: why)."""
    try:
        same = chain.node_for(stamp) == chain.node_for(library)
    except XtfError as exc:
        return "no", " ".join(str(exc).split())
    older = stamp <= library
    if same and (older or library.lineage != "xtf"):
        return "direct", "same layout"
    if library.lineage == "xtf" and older:
        return "at load", "migrated in memory when loaded"
    try:
        route = chain.route(stamp, library)
    except XtfError as exc:
        return "no", " ".join(str(exc).split())
    return "migrate", f"{route.direction} through {len(route.steps)} step(s): xtf migrate CKPT --to {library}"


SYMBOLS = {"direct": "=", "at load": "L", "migrate": "M", "no": "-"}


@dataclass(frozen=True)
class CompatReport:
    """How every release reads every layout (`matrix[release][layout]`: a kind of `reading`), and, for one
    file, where it can go (`file`: its path, stamp and one target per layout)."""

    installed: str
    layouts: list[dict[str, str]]  # {"node": stamp of the layout's first release, "stamps": its range}
    matrix: dict[str, dict[str, str]]
    outside: dict[str, str]  # what no layout covers: "older" and "newer" stamps
    file: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The `xtf compat --json` document."""
        document = {
            "installed": self.installed,
            "layouts": self.layouts,
            "matrix": self.matrix,
            "outside": self.outside,
        }
        return document if self.file is None else {**document, "file": self.file}

    def describe(self) -> list[str]:
        """The `xtf compat` text: the matrix as a table, then the file's targets."""
        ranges = [layout["stamps"] for layout in self.layouts]
        nodes = [layout["node"] for layout in self.layouts]
        width = max(len(r) for r in ranges)
        lines = [
            f"installed: {self.installed}; {len(nodes)} layouts, oldest first",
            "rows: the release reading; columns: the layout a file is stamped in (numbered as the rows)",
            "  = direct (same layout)   L migrated in memory at load   M xtf migrate --to first   - not at all",
            " " * (width + 5) + " ".join(f"{i + 1:>2}" for i in range(len(nodes))),
        ]
        for i, (library, stamps) in enumerate(zip(nodes, ranges)):
            cells = " ".join(f"{SYMBOLS[self.matrix[library][s]]:>2}" for s in nodes)
            lines.append(f"{i + 1:>2}  {stamps:<{width}}  {cells}")
        lines += [self.outside["older"], self.outside["newer"]]
        if self.file is not None:
            lines += ["", f"{self.file['path']}: stamped {self.file['stamp']}; can be brought to:"]
            lines += [
                f"  {target['release']:<{width}}  {target['kind']}: {target['detail']}"
                for target in self.file["targets"]
            ]
        return lines


def compat_report(chain: Any, ckpt: str | os.PathLike[str] | None = None) -> CompatReport:
    """The matrix `xtf compat` prints: every layout's stamp range, how each release reads each layout,
    and, for the checkpoint `ckpt` (headers read, nothing else), where it can go and how."""
    ranges = layout_ranges(chain)
    nodes = list(chain.nodes)
    file = None
    if ckpt is not None:
        from xtf_core.chain.plan import checkpoint_stamp
        from xtf_core.checkpoint.header import read_checkpoint_headers

        headers = read_checkpoint_headers(ckpt)
        stamp, _ = checkpoint_stamp(headers)
        targets = []
        for node in nodes:
            kind, detail = reading(node, stamp, chain)
            if kind == "migrate":
                detail = detail.replace("CKPT", str(ckpt)) + " -o OUT"
            targets.append({"release": ranges[node], "node": str(node), "kind": kind, "detail": detail})
        file = {"path": str(headers.path), "stamp": str(stamp), "targets": targets}
    return CompatReport(
        installed=str(chain.installed),
        layouts=[{"node": str(node), "stamps": ranges[node]} for node in nodes],
        matrix={str(library): {str(s): reading(library, s, chain)[0] for s in nodes} for library in nodes},
        outside={
            "older": f"stamps older than {nodes[0]}: no release reads them (xtf convert refuses them)",
            "newer": f"stamps newer than {chain.installed}: need a newer xtf to migrate them down",
        },
        file=file,
    )
