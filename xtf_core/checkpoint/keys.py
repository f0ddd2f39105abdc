"""The metadata keys of a stamped checkpoint, and the test for whether a file carries a stamp at all.

The bottom of `checkpoint/`: the header reader (which checks that shards agree on their stamp) and the
stamp module (which reads and writes stamps) both name these keys. No imports.
"""

from __future__ import annotations

from collections.abc import Mapping

LINEAGES = ("x-transformers", "xtf")
DEFAULT_LINEAGE = "xtf"
STAMP_FORMAT = "1"

KEY_FORMAT = "format"
KEY_STAMP_FORMAT = "xtf.format"
KEY_LINEAGE = "xtf.lineage"
KEY_VERSION = "xtf.version"
KEY_SPEC = "xtf.spec"
KEY_TIED = "xtf.tied"
KEY_FINGERPRINT = "xtf.fingerprint"
KEY_MIGRATIONS = "xtf.migrations"
KEY_ORIGIN = "xtf.origin"
KEY_IGNORED = "xtf.ignored"  # kwargs the converted release ignored (recorded by `xtf convert`)
MAX_VERSION_CHARS = 64


def is_stamped(metadata: Mapping[str, str]) -> bool:
    return any(key.startswith("xtf.") for key in metadata)
