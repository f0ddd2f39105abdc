"""Each core module remembers the constructor call that built it, as a JSON-ready spec."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import SpecError


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
        only) the dict's era is found from its names and shapes and it is migrated to this model's layout,
        or refused naming the candidate releases and the `xtf convert` command that resolves it.
        """
        load = super().load_state_dict  # type: ignore[misc]
        own = self.state_dict(keep_vars=True)  # type: ignore[attr-defined]
        if not strict or (
            state_dict.keys() == own.keys()
            and all(getattr(t, "shape", None) == own[k].shape for k, t in state_dict.items())
        ):
            return load(state_dict, strict=strict, assign=assign)
        # the model core knows no history: the converter for plain x-transformers dicts is asked, on demand
        from xtf_converters.plain_state import migrate_plain_state_dict

        migrated = migrate_plain_state_dict(self.spec(), state_dict, f"state dict for {type(self).__name__}")
        return load(migrated, strict=strict, assign=assign)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
