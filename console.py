"""How the `xtf` command talks to the terminal: exit statuses, the one error line, and closed pipes.

No click here: the installed command's fast path (`entry.py`) and the click verbs (`cli.py`) share it.
Exit status: 0 success (also when a reader such as `head` closes the output early), 1 an error (`error: ...`
on stderr, one line), 2 a usage error (one `error: ...` line too, no usage block), 130 interrupted.
"""

from __future__ import annotations

import errno
import json
import os
import sys

from xtf_core.errors import XtfError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
MESSAGE_LIMIT = 2000  # characters of one error line; the library keeps its own messages shorter


def json_text(data: object) -> str:
    """How every `--json` document is printed (both paths of `xtf inspect` and the click verbs)."""
    return json.dumps(data, indent=2, sort_keys=True)


def one_line(text: str) -> str:
    """Whitespace collapsed to single spaces, cut at MESSAGE_LIMIT characters."""
    line = " ".join(str(text).split())
    if len(line) > MESSAGE_LIMIT:
        line = line[: MESSAGE_LIMIT - 1] + "\u2026"
    return line


def os_error_text(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):  # outputs go to a temporary first
        reason += "; nothing was written there (free some space and retry)"
    return f"{exc.filename}: {reason}" if exc.filename is not None else reason


def error(text: str) -> None:
    """Write `error: <text>` as one line on stderr; a closed stderr is not worth a second error."""
    try:
        sys.stderr.write(f"error: {one_line(text)}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # AttributeError: descriptor 2 closed, no sys.stderr
        pass


def silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail on a closed pipe.

    This is what Python's documentation recommends for SIGPIPE: the reader is gone, nothing more is said.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real descriptor (e.g. a test runner's buffer)
        pass


def is_closed_pipe(exc: BaseException) -> bool:
    return isinstance(exc, BrokenPipeError) or (isinstance(exc, OSError) and exc.errno == errno.EPIPE)


def report_failure(exc: XtfError | OSError) -> int:
    """Say how a command failed (one error line; nothing for a closed pipe) and return its exit status.

    `XtfError` (from the library) and `OSError` (disk full, permission denied, ...) exit 1; output cut short
    by a reader that went away (`head`) ends quietly with 0."""
    if is_closed_pipe(exc):  # the reader has what it wanted
        silence_stdout()
        return EXIT_OK
    error(os_error_text(exc) if isinstance(exc, OSError) else str(exc))
    return EXIT_ERROR
