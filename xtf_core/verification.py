"""`verify_checkpoint`: does a file (migrated in memory if needed) still compute what it was saved with?"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .checkpoint.stamp import read_fingerprint
from .fingerprint import compare_fingerprint, smoke_run
from .loading import build_with_state, load_state


@dataclass(frozen=True)
class VerifyReport:
    """A checkpoint that passed: what was checked (`fingerprint`, or `finite` for a file without one)."""

    path: str
    stamp: str
    checked: str
    message: str
    migrated: list[str] = field(default_factory=list)
    max_diff: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The `xtf verify --json` document (`ok` is true: a file that fails raises instead)."""
        return {"ok": True, **{key: value for key, value in asdict(self).items() if value is not None}}


def verify_checkpoint(path: str | os.PathLike[str]) -> VerifyReport:
    """Load `path` and check it against its stored fingerprint (or, without one, that it runs finitely).

    Returns the report of a file that passed; raises VerificationError (or the load's own error) otherwise.
    """
    tensors, spec, info = load_state(path)
    where = str(info.path)
    model = build_with_state(spec, tensors, where)
    stamp, migrated = str(info.stamp), [step.get("id") for step in info.applied]
    stored = read_fingerprint(info.metadata, where)
    if stored is None:
        smoke_run(model, where)
        message = f"{where}: no fingerprint; tensors finite and the model runs"
        return VerifyReport(where, stamp, "finite", message, migrated)
    max_diff = compare_fingerprint(model, stored, where)
    message = f"{where}: OK, outputs match the saved fingerprint (max difference {max_diff:.2g})"
    return VerifyReport(where, stamp, "fingerprint", message, migrated, max_diff)
