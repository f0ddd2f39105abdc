"""The `xtf` verbs (click): parse options, call the library, print. Errors become one line, in one place.

Exit statuses and the error line are `console.py`'s; the installed command starts in `entry.py`, which
answers the header-only `xtf inspect` without importing click and hands everything else to `main` here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from xtf_cli.console import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    error,
    is_closed_pipe,
    json_text,
    one_line,
    report_failure,
    silence_stdout,
)
from xtf_core.errors import XtfError

if TYPE_CHECKING:
    from xtf_core.checkpoint.stamp import Stamp


def _usage_text(exc: click.UsageError) -> str:
    message = exc.format_message().rstrip(".")
    message = message[:1].lower() + message[1:]
    command = exc.ctx.command_path if exc.ctx is not None else "xtf"
    return f"{message} (see {command} --help)"


class XtfGroup(click.Group):
    """Every failure leaves as one `error: ...` line on stderr, with the exit status documented above.

    `XtfError` (raised by the library) and `OSError` (disk full, permission denied, ...) exit 1; click's
    usage errors (missing or unknown option, bad value) exit 2, without click's usage block; output cut
    short by a closed pipe ends quietly with 0.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (XtfError, OSError) as exc:
            ctx.exit(report_failure(exc))

    def make_context(self, info_name, args, parent=None, **extra):  # type: ignore[override]
        try:
            return super().make_context(info_name, args, parent, **extra)
        except OSError as exc:  # `xtf --help | head -n 1`: click prints help while parsing
            if not is_closed_pipe(exc):
                raise
            silence_stdout()
            raise click.exceptions.Exit(EXIT_OK) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        code: int | str | None = EXIT_OK
        try:
            try:
                code = super().main(args, prog_name or "xtf", complete_var, standalone_mode=False, **extra)
            except SystemExit as exc:  # a verb's own sys.exit (e.g. verify, lock --check)
                code = exc.code
            except click.exceptions.NoArgsIsHelpError as exc:
                click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
                code = EXIT_OK
            except click.UsageError as exc:
                error(_usage_text(exc))
                code = EXIT_USAGE
            except click.ClickException as exc:
                error(exc.format_message())
                code = exc.exit_code
            except (click.Abort, KeyboardInterrupt, EOFError):
                error("interrupted")
                code = EXIT_INTERRUPTED
            except OSError as exc:
                if not is_closed_pipe(exc):
                    raise
                silence_stdout()
                code = EXIT_OK
            if sys.stdout is not None:  # descriptor 1 closed (`xtf ... >&-`): click printed nothing
                sys.stdout.flush()
        except OSError as exc:  # the final flush into a closed pipe: the reader has what it wanted
            if not is_closed_pipe(exc):
                raise
            silence_stdout()
        sys.exit(code)


class _NonEmptyPath(click.Path):
    """A path; an empty string is a usage error (it would otherwise mean the current folder)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("an empty string names no file", param, ctx)
        return super().convert(value, param, ctx)


class _NonEmptyText(click.ParamType):
    """A string option that must say something (`--to ''` is an error, not the default)."""

    name = "text"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("an empty value is not allowed", param, ctx)
        return value


class _StampType(_NonEmptyText):
    """`0.1.0` (xtf) or `x-transformers==1.26.0`, checked when parsed."""

    name = "version"

    def convert(self, value, param, ctx):
        from xtf_core.checkpoint.stamp import Stamp

        text = super().convert(value, param, ctx)
        try:
            return Stamp.parse(text)
        except XtfError as exc:
            self.fail(one_line(str(exc)), param, ctx)


PATH = _NonEmptyPath(path_type=Path)
TEXT = _NonEmptyText()
STAMP = _StampType()


def _print_json(data: object) -> None:
    click.echo(json_text(data))


@click.group(cls=XtfGroup, name="xtf")
def main() -> None:
    """xtf: keep transformer checkpoints loadable forever."""


@main.command()
@click.argument("ckpt", type=PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(ckpt: Path, as_json: bool) -> None:
    """Show a checkpoint's stamp, spec, tensors, applied migrations and pending steps (reads headers only)."""
    from xtf_core.inspection import inspect_checkpoint

    summary = inspect_checkpoint(ckpt)
    if as_json:
        _print_json(summary.to_json())
    else:
        click.echo("\n".join(summary.describe()))


@main.command()
@click.argument("ckpt", type=PATH)
@click.option("-o", "--output", type=PATH, help="Write the migrated checkpoint here.")
@click.option("--in-place", is_flag=True, help="Rewrite CKPT itself, keeping CKPT.bak first.")
@click.option(
    "--to",
    "target",
    type=STAMP,
    help='Target stamp: "0.1.0" (xtf) or "x-transformers==1.26.0"; default: installed.',
)
@click.option("--to-lock", is_flag=True, help="Target the lockfile's pinned release (upgrade or downgrade).")
@click.option(
    "--lockfile",
    "lockfile_path",
    type=PATH,
    help="With --to-lock: the lockfile (default: $XTF_LOCK, else ./xtf.lock).",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def migrate(
    ckpt: Path,
    output: Path | None,
    in_place: bool,
    target: Stamp | None,
    to_lock: bool,
    lockfile_path: Path | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Rewrite a checkpoint for another xtf release (default: the installed one)."""
    from xtf_core.chain.stream import migrate_file

    if (output is None) == (not in_place):
        raise click.UsageError("give exactly one of -o OUT or --in-place")
    if to_lock and target is not None:
        raise click.UsageError("give --to VERSION or --to-lock, not both")
    if lockfile_path is not None and not to_lock:
        raise click.UsageError("--lockfile goes with --to-lock")
    lockfile = None
    if to_lock:
        from xtf_core.chain.graph import default_chain
        from xtf_core.lockfile.format import Lockfile

        lockfile = Lockfile.read(_lockfile_path(lockfile_path))
        stamp = lockfile.pin.target(default_chain())
    else:
        stamp = target
    from xtf_core.chain.plan import plan_file
    from xtf_core.checkpoint.source import open_checkpoint

    with open_checkpoint(ckpt) as opened:  # open once, plan once: the progress bar sizes the plan that runs
        locked = (
            lockfile.entry_for(opened.headers) if lockfile is not None and in_place and not dry_run else None
        )
        plan = plan_file(opened, stamp)
        if dry_run or not sys.stderr.isatty():
            migrate_file(opened, output, in_place=in_place, dry_run=dry_run, plan=plan)
        else:
            with click.progressbar(length=plan.output_bytes, label="migrating", file=sys.stderr) as bar:
                migrate_file(opened, output, in_place=in_place, plan=plan, progress=bar.update)
    if locked is not None:
        from xtf_core.lockfile.verbs import lock_checkpoints

        lock_checkpoints(lockfile.path, [ckpt])
    if as_json:
        _print_json({**plan.to_json(), "written": None if dry_run else str(output or ckpt)})
        return
    click.echo("\n".join(plan.describe()))
    if dry_run:
        click.echo("dry run: nothing written")
    else:
        backup = f" (backup: {ckpt}.bak)" if in_place else ""
        click.echo(f"wrote {output or ckpt}{backup}")
    if locked is not None:
        click.echo(f"{lockfile.path}: re-locked {locked.path} at {stamp}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the chain as JSON.")
def history(as_json: bool) -> None:
    """List every migration step, oldest first."""
    from xtf_core.chain.graph import default_chain

    steps = default_chain().steps
    if as_json:
        _print_json([step.to_json() for step in steps])
        return
    if not steps:
        click.echo("no migration steps: every checkpoint of this lineage shares one layout")
    for step in steps:
        click.echo(step.describe())


@main.command()
@click.argument("ckpt", type=PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(ckpt: Path, as_json: bool) -> None:
    """Check that a checkpoint still computes what its stored fingerprint says."""
    from xtf_core.verification import verify_checkpoint

    report = verify_checkpoint(ckpt)  # a file that does not verify raises: one error line, exit 1
    if as_json:
        _print_json(report.to_json())
    else:
        click.echo(report.message)


@main.command()
@click.argument("src", type=PATH)
@click.option(
    "--from",
    "source",
    type=TEXT,
    metavar="x-transformers[==RELEASE]",
    help="Convert an unstamped x-transformers state dict (torch pickle).",
)
@click.option(
    "--config",
    "config_path",
    type=TEXT,
    help="The constructor call: a JSON spec, a .py file holding the call, or the call itself "
    "('TransformerWrapper(num_tokens=256, ..., attn_layers=Decoder(dim=512, depth=6, heads=8))'); "
    "with that release's kwargs. Read, never run.",
)
@click.option(
    "--key", type=TEXT, help="Where the state dict sits inside the pickle (default: found automatically)."
)
@click.option(
    "--prefix",
    type=TEXT,
    help="The model's name prefix inside a bigger state dict (net., model.decoder.); default: the one "
    "prefix where the config's layout fits.",
)
@click.option(
    "--into",
    type=PATH,
    help="With --to: write a copy of this pickle (e.g. the original application checkpoint) with only the "
    "tensors under the model's prefix replaced.",
)
@click.option(
    "--to",
    "target",
    type=TEXT,
    metavar="x-transformers==RELEASE",
    help="Export a stamped checkpoint as that release's plain state dict.",
)
@click.option("-o", "--output", type=PATH, required=True, help="The file to write.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def convert(
    src: Path,
    source: str | None,
    config_path: str | None,
    key: str | None,
    prefix: str | None,
    into: Path | None,
    target: str | None,
    output: Path,
    as_json: bool,
) -> None:
    """Stamp a legacy checkpoint (--from), or export a stamped one to an x-transformers release (--to).

    SRC may also be a torch.distributed.checkpoint folder (.metadata + *.distcp): its model tensors are
    stamped as the installed xtf (or, with --from x-transformers==RELEASE, as that release)."""
    from xtf_converters import dcp, releases, xtransformers

    if target is not None:  # export a stamped file
        if source is not None:
            raise click.UsageError("give exactly one of --from (import) or --to (export)")
        release = releases.parse_source(target)
        if release is None:
            raise click.UsageError("--to needs a release: --to x-transformers==RELEASE")
        if into is None and prefix is not None:
            raise click.UsageError("--prefix on an export goes with --into ORIGINAL.pt")
        report = xtransformers.export(src, output, release=release, into=into, key=key, prefix=prefix)
    else:  # import: a torch pickle (--from) or a DCP folder (stamped as --from names, else as installed xtf)
        folder = dcp.is_dcp_checkpoint(src)
        if source is None and not folder:
            raise click.UsageError("give exactly one of --from (import) or --to (export)")
        if config_path is None:
            raise click.UsageError(
                f"{'a DCP checkpoint is imported: give' if folder else '--from needs'} --config CONFIG.json"
            )
        if into is not None:
            raise click.UsageError("--into goes with --to (export into a copy of the original pickle)")
        release = releases.parse_source(source) if source is not None else None
        if folder and source is not None and release is None:
            raise click.UsageError(
                "--from on a DCP checkpoint needs a release: --from x-transformers==RELEASE"
            )
        report = xtransformers.convert(
            src,
            output,
            release=release,
            config=xtransformers.read_config(config_path),
            key=key,
            prefix=prefix,
        )
    if as_json:
        _print_json(report.to_json())
    else:
        click.echo("\n".join(report.describe()))


# ------------------------------------------------------------------------------------------ lockfile


def _lockfile_path(option: Path | None) -> Path:
    from xtf_core.lockfile.verbs import lockfile_path

    return lockfile_path(option)


@main.command()
@click.argument("ckpts", nargs=-1, type=PATH)
@click.option(
    "--pin",
    "pin_text",
    type=TEXT,
    metavar="SPEC",
    help='Pin: "xtf==0.1.0" (default: installed) or "x-transformers==1.26.0".',
)
@click.option(
    "--lockfile",
    "lockfile_path",
    type=PATH,
    help="The lockfile (default: $XTF_LOCK, else ./xtf.lock).",
)
@click.option("--check", is_flag=True, help="Verify the pin and every locked file; exit 1 on any problem.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def lock(
    ckpts: tuple[Path, ...], pin_text: str | None, lockfile_path: Path | None, check: bool, as_json: bool
) -> None:
    """Create or update the lockfile (pin a release, lock checkpoints by sha256), or --check it."""
    from xtf_converters.releases import check_release
    from xtf_core.lockfile.format import Lockfile
    from xtf_core.lockfile.verbs import check_lockfile, lock_checkpoints

    path = _lockfile_path(lockfile_path)
    if check:
        if ckpts or pin_text:
            raise click.UsageError("--check takes no checkpoints and no --pin")
        lockfile = Lockfile.read(path)
        problems = check_lockfile(lockfile, release_check=check_release)
        if as_json:
            _print_json(
                {"lockfile": str(path), "pin": str(lockfile.pin), "ok": not problems, "problems": problems}
            )
        else:
            for problem in problems:
                click.echo(problem)
            if not problems:
                click.echo(
                    f"ok: {len(lockfile.entries)} locked checkpoint(s) match {path}, and all load in {lockfile.pin}"
                )
        if problems:
            if not as_json:
                click.echo(f"{path}: {len(problems)} problem(s)", err=True)
            sys.exit(1)
        return
    updated, added, notes = lock_checkpoints(path, list(ckpts), pin_text, release_check=check_release)
    for note in notes:
        click.echo(f"warning: {note}", err=True)
    if as_json:
        _print_json(
            {
                "lockfile": str(path),
                "pin": str(updated.pin),
                "target": updated.target,
                "stamps": updated.stamps,
                "locked": [entry.path for entry in added],
                "checkpoints": len(updated.entries),
            }
        )
        return
    click.echo(
        f"{path}: pin {updated.pin} (migrate target {updated.target}; loads {', '.join(updated.stamps)}); "
        f"{len(updated.entries)} checkpoint(s)"
    )
    for entry in added:
        click.echo(f"  locked {entry.path}  {entry.stamp}  sha256 {entry.sha256[:12]}…  {entry.size} bytes")


@main.command()
@click.argument("ckpt", required=False, type=PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the matrix as JSON.")
def compat(ckpt: Path | None, as_json: bool) -> None:
    """Which stamps each release reads directly, by migration, or not at all; for CKPT, where it can go."""
    from xtf_core.chain.compat import compat_report
    from xtf_core.chain.graph import default_chain

    report = compat_report(default_chain(), ckpt)
    if as_json:
        _print_json(report.to_json())
    else:
        click.echo("\n".join(report.describe()))


@main.command()
@click.argument("folder", type=PATH)
@click.option("-o", "--output", type=PATH, required=True, help="The single file to write.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def consolidate(folder: Path, output: Path, as_json: bool) -> None:
    """Join a sharded checkpoint folder (e.g. from xtf_core.distributed.save) into one stamped file."""
    from xtf_core.distributed.consolidate import consolidate as join

    report = join(folder, output)
    if as_json:
        _print_json(report.to_json())
    else:
        click.echo("\n".join(report.describe()))


if __name__ == "__main__":
    main()
