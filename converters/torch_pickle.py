"""Read a state dict out of a torch pickle, safely (`weights_only=True`), wherever the user nested it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xtf_core.errors import ConversionError

NESTING_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "ema_model", "weights")
STRIP_PREFIXES = ("module.", "_orig_mod.")


def _is_state_dict(value: Any) -> bool:
    import torch

    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if state and all(name.startswith(prefix) for name in state):
                state = {name[len(prefix) :]: tensor for name, tensor in state.items()}
                changed = True
    return state


def load_pickle(path: str | os.PathLike[str]) -> Any:
    """The object a `torch.save` file holds, unpickled with `weights_only=True` (plain containers and tensors)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(
            f"{path}: refused to unpickle: the file holds objects other than tensors and plain containers "
            f"({first}); save the state dict alone (torch.save(model.state_dict(), ...))"
        ) from exc
    except Exception as exc:  # torch raises several types for non-pickle input
        raise ConversionError(f"{path}: not a torch checkpoint ({type(exc).__name__}: {exc})") from exc


def locate_state_dict(obj: Any, key: str | None, path: str | os.PathLike[str]) -> tuple[Any, str | None]:
    """(the state dict inside `obj`, the top-level key holding it or None for the top level)."""
    where, found = "top level", None
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            raise ConversionError(f"{path}: no key {key!r} at the top level")
        obj, where, found = obj[key], f"key {key!r}", key
    elif not _is_state_dict(obj) and isinstance(obj, Mapping):
        for candidate in NESTING_KEYS:
            if _is_state_dict(obj.get(candidate)):
                obj, where, found = obj[candidate], f"key {candidate!r}", candidate
                break
    if not _is_state_dict(obj):
        keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ConversionError(
            f"{path}: no state dict (name -> tensor) at the {where}; found {keys}; name the key with --key"
        )
    return obj, found


def read_state_dict(path: str | os.PathLike[str], key: str | None = None) -> tuple[dict[str, Any], str]:
    """(state dict, where it was found) from a `torch.save` file; never unpickles arbitrary objects."""
    state, found = locate_state_dict(load_pickle(path), key, path)
    return _strip_prefixes(dict(state)), "top level" if found is None else f"key {found!r}"
