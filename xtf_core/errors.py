"""The exceptions xtf raises. The CLI turns any `XtfError` into one line, in one place."""

from __future__ import annotations


class XtfError(Exception):
    """Base class: every message names the file, tensor or option at fault, and the fix."""


class CheckpointFormatError(XtfError):
    """A file is not a valid (stamped) safetensors checkpoint: bad header, missing stamp, bad spec JSON."""


class SpecError(XtfError):
    """A spec names an unknown class, an unsupported option, or a value of the wrong kind."""


class UnsupportedOptionError(SpecError):
    """A constructor option outside what the xtf core implements."""


class StateDictMismatchError(XtfError):
    """Tensor names or shapes disagree with what the spec builds."""


class VersionError(XtfError):
    """A stamp the installed xtf cannot handle (e.g. written by a newer version)."""


class ChainError(XtfError):
    """The migration chain is broken (gap, fork, cycle, duplicate id) or has no route for a request."""


class IrreversibleStepError(ChainError):
    """A downgrade would pass through a step that declares no reverse."""


class MigrationError(XtfError):
    """A step could not be applied to a checkpoint (precondition failed, tensor missing, value not preservable)."""


class VerificationError(XtfError):
    """A checkpoint does not compute what its stored fingerprint says."""


class LockError(XtfError):
    """The lockfile is malformed, or a checkpoint or the installed version disagrees with it."""


class ConversionError(XtfError):
    """A foreign checkpoint cannot be brought into the stamped format."""
