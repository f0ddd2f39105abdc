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


class DuplicateStepError(ChainError):
    """Two step modules declare the same `revision`."""

    def __init__(self, revision: str, modules: list[str]):
        self.revision = revision
        self.modules = modules
        super().__init__(
            f"migration chain: revision {revision} is declared by more than one step ({', '.join(modules)}); "
            "give each step its own revision"
        )


class MissingParentError(ChainError):
    """A step's `down_revision` is produced by no other step (a gap in the chain)."""

    def __init__(self, step: str, parent: str, module: str | None = None):
        self.step = step
        self.parent = parent
        self.module = module
        where = f" ({module})" if module else ""
        super().__init__(
            f"migration chain: step {step}{where} has down_revision {parent}, which no step produces; "
            "add the missing step or point down_revision at the previous revision"
        )


class MultipleHeadsError(ChainError):
    """The chain forks: one revision has several children, so there is more than one head."""

    def __init__(self, branch_point: str, children: list[str]):
        self.branch_point = branch_point
        self.children = children
        super().__init__(
            f"migration chain forks at {branch_point}: steps {', '.join(children)} all start there; "
            "re-point all but one down_revision so the chain is a single line"
        )


class CycleError(ChainError):
    """Steps form a loop, so no order exists."""

    def __init__(self, revisions: list[str]):
        self.revisions = revisions
        super().__init__(
            f"migration chain has a cycle through {', '.join(revisions)}; "
            "each step must move to a newer revision than its down_revision"
        )
