"""Find an x-transformers model inside a bigger state dict by its name prefix, and put one back.

An `AutoregressiveWrapper` saves every tensor under `net.`; a user's module holding the model as
`self.decoder` saves it under `decoder.`, next to its own tensors. The prefix is named (`--prefix net.`) or
found: a prefix fits when the names and shapes under it are exactly a layout the config builds (at the
release named, or at any era when the release is detected).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from xtf_core.errors import ConversionError

Layout = Mapping[str, tuple[int, ...]]


def normalise(prefix: str) -> str:
    """`net` and `net.` are the same prefix; '' is the top level."""
    prefix = prefix.strip()
    return prefix if not prefix or prefix.endswith(".") else prefix + "."


def under(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of `state` under `prefix`, with the prefix taken off their names."""
    return {name[len(prefix) :]: value for name, value in state.items() if name.startswith(prefix)}


def candidate_prefixes(names: Iterable[str], layouts: Iterable[Layout]) -> list[str]:
    """Prefixes `p` such that `p + n` is a name in `names` for some layout name `n` (with `p` '' or ending in '.')."""
    names = list(names)
    wanted = set()
    for layout in layouts:
        wanted.update(layout)
    found = set()
    for name in names:
        parts = name.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in wanted:
                found.add(".".join(parts[:i]) + ("." if i else ""))
    return sorted(found, key=lambda p: (p.count("."), p))


def _layout_of(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in state.items() if hasattr(t, "shape")}


def fitting_prefixes(state: Mapping[str, Any], layouts: list[Layout]) -> list[str]:
    """The prefixes under which the names and shapes are exactly one of `layouts`."""
    found = _layout_of(state)
    fits = []
    for prefix in candidate_prefixes(found, layouts):
        sub = under(found, prefix)
        if any(sub == dict(layout) for layout in layouts):
            fits.append(prefix)
    return fits


def best_partial_prefix(state: Mapping[str, Any], layouts: list[Layout]) -> tuple[str, int, int] | None:
    """(prefix, names found under it, names the closest layout has) for the prefix holding most of a layout's
    names; used to say where the model probably is when nothing fits exactly."""
    names = list(state)
    best: tuple[str, int, int] | None = None
    for prefix in candidate_prefixes(names, layouts):
        sub = set(under(state, prefix))
        for layout in layouts:
            hits = len(sub & set(layout))
            if best is None or hits > best[1]:
                best = (prefix, hits, len(layout))
    return best


def select(
    state: dict[str, Any], layouts: list[Layout], prefix: str | None, where: str
) -> tuple[dict[str, Any], str, bool]:
    """(the model's state dict, its prefix, whether that prefix is only a guess) out of `state`; `prefix`
    None means: find it.

    Without a prefix: the whole dict when it fits at the top level; the one fitting prefix when exactly one
    fits; an error listing them when several do. When none fits, the prefix holding most of the config's
    tensor names is a guess (the layout check that follows names what differs there, and `mismatch_hint`
    says where it looked)."""
    if prefix is not None:
        prefix = normalise(prefix)
        sub = under(state, prefix)
        if not sub:
            heads = sorted({name.split(".")[0] + "." for name in state})[:8]
            raise ConversionError(
                f"{where}: no tensor under the prefix {prefix!r}; the top-level names start with {heads}"
            )
        return sub, prefix, False
    fits = fitting_prefixes(state, layouts)
    if "" in fits:
        return state, "", False
    if len(fits) > 1:
        raise ConversionError(
            f"{where}: the config's model fits under several prefixes ({', '.join(repr(p) for p in fits)}); "
            "name the one to convert with --prefix"
        )
    if fits:
        return under(state, fits[0]), fits[0], False
    best = best_partial_prefix(state, layouts)  # the top level comes first, and wins ties
    if best is not None and best[0] and best[1] > 0:
        return under(state, best[0]), best[0], True
    return state, "", False


def mismatch_hint(state: Mapping[str, Any], layouts: list[Layout], prefix: str) -> str:
    """Where the layout was looked for, when that was a guess: the prefix and how many of the config's tensor
    names are there."""
    if not prefix or not layouts:
        return ""
    names = set(under(state, prefix))
    hits = max((len(names & set(layout)), len(layout)) for layout in layouts)
    return (
        f" (compared under the prefix {prefix!r}, where {hits[0]} of the {hits[1]} tensor names the config "
        "builds are; if the model is elsewhere, name its prefix with --prefix)"
    )


def replace_under(state: Mapping[str, Any], prefix: str, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `state` in which the entries under `prefix` are replaced by `tensors` (under that prefix,
    placed where the first replaced entry was); every other entry is kept as it was, in its place. An
    `OrderedDict` (what `state_dict()` returns) stays one, with its `_metadata`."""
    out: dict[str, Any] = type(state)() if isinstance(state, OrderedDict) else {}
    inserted = False
    for name, value in state.items():
        if name.startswith(prefix):
            if not inserted:
                out.update({prefix + key: tensor for key, tensor in tensors.items()})
                inserted = True
            continue
        out[name] = value
    if not inserted:
        out.update({prefix + key: tensor for key, tensor in tensors.items()})
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out
