"""Each core module remembers the constructor call that built it, as a JSON-ready spec.

It also defines the one hook through which a plain state dict of another era reaches a model: the core
knows no history, so the migrator is a plug-in found by entry point group `xtf.plain_state` (xtf's own is
`xtf_converters.plain_state:migrate_plain_state_dict`, declared in pyproject.toml), never imported by name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from torch import nn

from ..errors import SpecError, XtfError

PLAIN_STATE_GROUP = "xtf.plain_state"

PlainStateMigrator = Callable[[dict[str, Any], Mapping[str, Any], str], dict[str, Any]]
"""`(spec, state_dict, where) -> state_dict`: a whole-model plain state dict of some era, in the layout of
the model built from `spec` now; raises `StateDictMismatchError` (naming `where`) when it cannot."""


@functools.cache
def plain_state_migrator() -> PlainStateMigrator | None:
    """The installed plug-in of group `xtf.plain_state`, loaded once; None when none is installed.

    Asked only when a strict load's names or shapes differ from the model's own, so an ordinary load never
    reads package metadata. Two plug-ins are refused rather than one picked by chance.
    """
    found = sorted(entry_points(group=PLAIN_STATE_GROUP), key=lambda point: point.name)
    if not found:
        return None
    if len(found) > 1:
        named = ", ".join(f"{point.name} = {point.value}" for point in found)
        raise XtfError(
            f"several plain state dict migrators are installed (entry point group {PLAIN_STATE_GROUP!r}: "
            f"{named}); uninstall all but one"
        )
    return found[0].load()


def to_spec_value(owner: str, key: str, value: Any) -> Any:
    """A constructor argument as spec data: JSON scalars, lists, nested specs; nothing else."""
    if isinstance(value, SpecRecorder):
        return value.spec()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [to_spec_value(owner, key, v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_spec_value(owner, f"{key}.{k}", v) for k, v in value.items()}
    if isinstance(value, nn.Module) and key in ("attn_layers", "net", "encoder", "decoder"):
        raise SpecError(f"{owner}: '{key}' is a {type(value).__name__}, which is not an xtf core class")
    if isinstance(value, nn.Module) or callable(value):
        # a module or function cannot be written into a spec: the option is refused like any unsupported one
        from .options import refuse

        refuse(owner, key, value, [])
    raise SpecError(
        f"{owner}: '{key}'={value!r} cannot be stored in a spec (only JSON values and core modules)"
    )


class SpecRecorder:
    """Mixin: `_record_spec(kwargs)` in `__init__`, `spec()` afterwards."""

    _spec: dict[str, Any]

    def _record_spec(self, kwargs: dict[str, Any]) -> None:
        owner = type(self).__name__
        self._spec = {"class": owner, **{k: to_spec_value(owner, k, v) for k, v in kwargs.items()}}

    def spec(self) -> dict[str, Any]:
        return _deep_copy(self._spec)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """`nn.Module.load_state_dict`; a whole-model x-transformers state dict of another era is migrated.

        When the names are the model's own, this is torch's load, at torch's cost. Otherwise (strict loads
        only) the installed `xtf.plain_state` plug-in migrates it: xtf's finds the dict's era from its names
        and shapes and migrates it to this model's layout, or refuses naming the candidate releases and the
        `xtf convert` command that resolves it. With no plug-in installed, torch's strict load reports the
        mismatch.
        """
        load = super().load_state_dict  # type: ignore[misc]
        own = self.state_dict(keep_vars=True)  # type: ignore[attr-defined]
        if not strict or (
            state_dict.keys() == own.keys()
            and all(getattr(t, "shape", None) == own[k].shape for k, t in state_dict.items())
        ):
            return load(state_dict, strict=strict, assign=assign)
        # the model core knows no history: the installed migrator (a plug-in) is asked, on demand
        migrate = plain_state_migrator()
        if migrate is None:
            return load(state_dict, strict=strict, assign=assign)
        migrated = migrate(self.spec(), state_dict, f"state dict for {type(self).__name__}")
        return load(migrated, strict=strict, assign=assign)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
