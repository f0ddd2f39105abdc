"""`verify_checkpoint`: does a file (migrated in memory if needed) still compute what it was saved with?"""

from __future__ import annotations

import os
from typing import Any

from .checkpoint.stamp import read_fingerprint
from .fingerprint import compare_fingerprint, smoke_run
from .loading import build_with_state, load_state


def verify_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load `path` and check it against its stored fingerprint (or, without one, that it runs finitely).

    Returns a report (`ok`, `message`, `stamp`, `migrated`, `max_diff`); raises VerificationError on mismatch.
    """
    tensors, spec, info = load_state(path)
    where = str(info["path"])
    model = build_with_state(spec, tensors, where)
    report: dict[str, Any] = {
        "path": where,
        "stamp": str(info["stamp"]),
        "migrated": [step.get("id") for step in info["applied"]],
    }
    stored = read_fingerprint(info["metadata"], where)
    if stored is None:
        smoke_run(model, where)
        report |= {
            "ok": True,
            "checked": "finite",
            "message": f"{where}: no fingerprint; tensors finite and the model runs",
        }
        return report
    max_diff = compare_fingerprint(model, stored, where)
    report |= {
        "ok": True,
        "checked": "fingerprint",
        "max_diff": max_diff,
        "message": f"{where}: OK, outputs match the saved fingerprint (max difference {max_diff:.2g})",
    }
    return report
