"""Each core module remembers the constructor call that built it, as a JSON-ready spec."""

from __future__ import annotations

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


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
