"""The exceptions xtf raises. The CLI turns any `XtfError` into one line, in one place."""

from __future__ import annotations

import reprlib

MAX_ECHO_CHARS = 200
MAX_MESSAGE_CHARS = 2000


def bounded(value: object, limit: int = MAX_ECHO_CHARS) -> str:
    """`repr(value)` for an error message, cut to about `limit` characters.

    Use it wherever a message echoes data from a file or an argument (tensor names, class names, shapes,
    option values, keys): a cut value keeps its head, then `…` and its full size, so a 4 MiB name or a
    10,000-dimensional shape still gives a short one-line error. Never builds the whole repr of a huge value.
    """
    if isinstance(value, (str, bytes)):
        text = repr(value[: limit + 2])
        if len(value) <= limit and len(text) <= limit + 2:
            return text
        return f"{text[:limit]}… ({len(value)} {'characters' if isinstance(value, str) else 'bytes'})"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * limit:
        return f"<an integer of {value.bit_length()} bits>"
    text = _REPR.repr(value)
    if len(text) <= limit:
        return text
    size = (
        f"{len(value)} items" if isinstance(value, (list, tuple, dict, set)) else f"{len(text)}+ characters"
    )
    return f"{text[:limit]}… ({size})"


def cut(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """Plain text (no quotes) cut to `limit` characters, with `…` and its full length when cut."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


_REPR = reprlib.Repr()
_REPR.maxlevel = 4
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 40
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = MAX_ECHO_CHARS


class XtfError(Exception):
    """Base class: every message names the file, tensor or option at fault, and the fix.

    A message is one line of at most MAX_MESSAGE_CHARS characters: a longer one keeps its head and tail
    around a marker, so whatever a raise site echoes, the CLI's `error:` line stays bounded.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and len(args[0]) > MAX_MESSAGE_CHARS:
            text = args[0]
            keep = MAX_MESSAGE_CHARS // 2
            args = (f"{text[:keep]} …[{len(text) - 2 * keep} characters cut]… {text[-keep:]}",)
        super().__init__(*args)


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
