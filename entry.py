"""The installed `xtf` command: starts fast, and hands every verb but a plain `xtf inspect` to click.

`xtf inspect FILE` and `xtf inspect FILE --json` read headers only, so they are answered here without
importing click (which costs more than the rest of the command). Any other form of the command line,
`--help` included, goes to the click verbs in `cli.py`, unchanged; both paths print the same text through
the same library call, and fail with the same one error line and exit status (`console.py`).
"""

from __future__ import annotations

import sys


def run(argv: list[str] | None = None) -> None:
    """The `xtf` console script: exits with the command's status."""
    args = sys.argv[1:] if argv is None else list(argv)
    plain = _plain_inspect(args)
    if plain is None:
        from xtf_cli.cli import main

        main(args)
        return
    sys.exit(_inspect(*plain))


def _plain_inspect(args: list[str]) -> tuple[str, bool] | None:
    """(path, as_json) for `inspect PATH`, `inspect PATH --json` or `inspect --json PATH`; None otherwise."""
    if not args or args[0] != "inspect" or len(args) not in (2, 3):
        return None
    rest = args[1:]
    as_json = "--json" in rest
    if as_json:
        rest.remove("--json")
    if len(rest) != 1 or rest[0].startswith("-") or not rest[0].strip():
        return None  # options, a missing or empty path: click says what is wrong
    return rest[0], as_json


def _inspect(path: str, as_json: bool) -> int:
    """What `xtf inspect` prints and returns, without click."""
    from xtf_cli.console import EXIT_INTERRUPTED, EXIT_OK, error, json_text, report_failure
    from xtf_core.errors import XtfError

    try:
        from xtf_core.inspection import inspect_checkpoint

        summary = inspect_checkpoint(path)
        if as_json:
            text = json_text(summary.to_json())
        else:
            text = "\n".join(summary.describe())
        if sys.stdout is not None:  # a closed descriptor 1 leaves no stdout: nothing to say, as click does
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
    except (XtfError, OSError) as exc:
        return report_failure(exc)
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    run()
