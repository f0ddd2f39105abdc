"""Which x-transformers releases xtf reads: the first, the newest it knows, and the ones it refuses, by name."""

from __future__ import annotations

from packaging.version import Version

from xtf_core.checkpoint.stamp import Stamp
from xtf_core.errors import ConversionError

LINEAGE = "x-transformers"
FIRST_SUPPORTED = Version("0.0.9")
LAST_KNOWN = Version("2.31.10")
BROKEN_RELEASES = {
    "0.4.0": "a one-release function (post-norm stacks also normed their last block; cross-attention crashed)",
    "0.8.0": "a one-release layout (GRU residual gating on by default, removed in 0.8.1) no later release kept",
    "0.11.0": "a one-release layout (depthwise-convolution queries, reverted in 0.11.1) no later release kept",
    "0.20.0": "a broken release (Residual.__init__ TypeError on construction)",
    "0.21.0": "a broken release (pre-norm blocks built without their norm, fixed in 0.21.1)",
    "0.29.0": "an experimental release (feed-forward input layer commented out, doubled to_k)",
    "0.29.1": "an experimental release (feed-forward input layer commented out, doubled to_k)",
    "1.16.2": "CascadingHeads was applied unconditionally (outputs differ from every other release)",
    "1.16.3": "CascadingHeads was applied unconditionally (outputs differ from every other release)",
    "1.16.4": "CascadingHeads was applied unconditionally (outputs differ from every other release)",
    "1.31.2": "a broken release (TypeError on construction)",
    "1.5.2": "a broken release (ZeroDivisionError building any model: an experimental feed-forward)",
    "1.37.1": "a broken release (no model runs: 'you did not train with recycling')",
    "1.40.4": "a one-release layout (every stack built an unused reinject_input_proj, removed in 1.40.5)",
}


def check_release(release: str) -> Stamp:
    """A release the chain can take a file from, or a ConversionError saying why not."""
    try:
        version = Version(release)
    except Exception as exc:
        raise ConversionError(f"{release!r} is not a release number (expected e.g. 1.26.0)") from exc
    if version < FIRST_SUPPORTED:
        raise ConversionError(
            f"x-transformers {release} is older than {FIRST_SUPPORTED}, the oldest release xtf converts"
        )
    if version > LAST_KNOWN:
        raise ConversionError(
            f"x-transformers {release} is newer than {LAST_KNOWN}, the newest release this xtf knows; upgrade xtf"
        )
    if str(version) in BROKEN_RELEASES:
        raise ConversionError(
            f"x-transformers {release} was {BROKEN_RELEASES[str(version)]}; name the release you trained with"
        )
    return Stamp(LINEAGE, str(version))


def parse_source(text: str) -> str | None:
    """`x-transformers==1.26.0` -> '1.26.0'; `x-transformers` -> None (detect)."""
    name, sep, release = text.partition("==")
    if name.strip() != LINEAGE:
        raise ConversionError(
            f"--from {text!r}: only x-transformers checkpoints are converted (x-transformers[==RELEASE])"
        )
    return release.strip() if sep else None
