"""The `xtf` command line: parse options, call the library, print. Errors become one line, in one place.

Exit status: 0 success (also when a reader such as `head` closes the output early), 1 an error (`error: ...`
on stderr, one line), 2 a usage error (one `error: ...` line too, no usage block), 130 interrupted.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import click

from xtf_core.errors import XtfError

if TYPE_CHECKING:
    from xtf_core.checkpoint.stamp import Stamp

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
MESSAGE_LIMIT = 2000  # characters of one error line; the library keeps its own messages shorter


def _one_line(text: str) -> str:
    """Whitespace collapsed to single spaces, cut at MESSAGE_LIMIT characters."""
    line = " ".join(str(text).split())
    if len(line) > MESSAGE_LIMIT:
        line = line[: MESSAGE_LIMIT - 1] + "\u2026"
    return line


def _os_error_text(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):  # outputs go to a temporary first
        reason += "; nothing was written there (free some space and retry)"
    return f"{exc.filename}: {reason}" if exc.filename is not None else reason


def _error(text: str) -> None:
    """Write `error: <text>` as one line on stderr; a closed stderr is not worth a second error."""
    try:
        sys.stderr.write(f"error: {_one_line(text)}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _usage_text(exc: click.UsageError) -> str:
    message = exc.format_message().rstrip(".")
    message = message[:1].lower() + message[1:]
    command = exc.ctx.command_path if exc.ctx is not None else "xtf"
    return f"{message} (see {command} --help)"


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail on a closed pipe.

    This is what Python's documentation recommends for SIGPIPE: the reader is gone, nothing more is said.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real descriptor (e.g. a test runner's buffer)
        pass


def _is_closed_pipe(exc: BaseException) -> bool:
    return isinstance(exc, BrokenPipeError) or (isinstance(exc, OSError) and exc.errno == errno.EPIPE)


class XtfGroup(click.Group):
    """Every failure leaves as one `error: ...` line on stderr, with the exit status documented above.

    `XtfError` (raised by the library) and `OSError` (disk full, permission denied, ...) exit 1; click's
    usage errors (missing or unknown option, bad value) exit 2, without click's usage block; output cut
    short by a closed pipe ends quietly with 0.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except XtfError as exc:
            _error(str(exc))
            ctx.exit(EXIT_ERROR)
        except OSError as exc:
            if _is_closed_pipe(exc):  # the reader (e.g. `head`) has what it wanted
                _silence_stdout()
                ctx.exit(EXIT_OK)
            _error(_os_error_text(exc))
            ctx.exit(EXIT_ERROR)

    def make_context(self, info_name, args, parent=None, **extra):  # type: ignore[override]
        try:
            return super().make_context(info_name, args, parent, **extra)
        except OSError as exc:  # `xtf --help | head -n 1`: click prints help while parsing
            if not _is_closed_pipe(exc):
                raise
            _silence_stdout()
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
                _error(_usage_text(exc))
                code = EXIT_USAGE
            except click.ClickException as exc:
                _error(exc.format_message())
                code = exc.exit_code
            except (click.Abort, KeyboardInterrupt, EOFError):
                _error("interrupted")
                code = EXIT_INTERRUPTED
            except OSError as exc:
                if not _is_closed_pipe(exc):
                    raise
                _silence_stdout()
                code = EXIT_OK
            sys.stdout.flush()
        except OSError as exc:  # the final flush into a closed pipe: the reader has what it wanted
            if not _is_closed_pipe(exc):
                raise
            _silence_stdout()
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
            self.fail(_one_line(str(exc)), param, ctx)


PATH = _NonEmptyPath(path_type=Path)
TEXT = _NonEmptyText()
STAMP = _StampType()


def _print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


@click.group(cls=XtfGroup, name="xtf")
def main() -> None:
    """xtf: keep transformer checkpoints loadable forever."""


def _pending_steps(stamp: Stamp) -> list[dict]:
    """The steps `xtf migrate` would run to bring a file at `stamp` to the installed release."""
    from xtf_core.chain.graph import default_chain

    pending = default_chain().route(stamp)
    return [{**record, "summary": step.summary} for record, step in zip(pending.records(), pending.steps)]


@main.command()
@click.argument("ckpt", type=PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(ckpt: Path, as_json: bool) -> None:
    """Show a checkpoint's stamp, spec, tensors, applied migrations and pending steps (reads headers only)."""
    # Headers and stamps only: the chain (and every migration step module) is imported only when the file
    # is at another release than the installed one, so inspecting a current file stays fast.
    from xtf_core.checkpoint.header import read_checkpoint_headers
    from xtf_core.checkpoint.stamp import (
        current_stamp,
        is_stamped,
        read_checkpoint_stamp,
        read_migrations,
        read_origin,
    )

    headers = read_checkpoint_headers(ckpt)
    where = str(headers.path)
    metadata = headers.metadata
    dtypes = Counter(entry.dtype for _, entry in headers.entries())
    report: dict = {
        "path": where,
        "sharded": headers.is_sharded,
        "shards": list(headers.shards),
        "tensors": headers.tensor_count,
        "bytes": headers.data_bytes,
        "dtypes": dict(sorted(dtypes.items())),
        "installed": str(current_stamp()),
        "stamp": None,
    }
    if is_stamped(metadata):
        stamp, spec = read_checkpoint_stamp(headers)
        origin = read_origin(metadata, where)
        report.update(
            stamp=str(stamp),
            origin=f"{origin['lineage']}=={origin['version']}" if origin else None,
            spec=spec,
            migrations=read_migrations(metadata, where),
        )
        if "xtf.ignored" in metadata:  # options the converted release silently ignored (xtf convert)
            try:
                report["ignored"] = json.loads(metadata["xtf.ignored"])
            except json.JSONDecodeError:
                report["ignored"] = metadata["xtf.ignored"]
        try:
            report["pending"] = [] if stamp == current_stamp() else _pending_steps(stamp)
        except XtfError as exc:
            report["pending_error"] = " ".join(str(exc).split())
    if as_json:
        _print_json(report)
        return
    layout = f"sharded, {len(headers.shards)} shards" if headers.is_sharded else "single file"
    click.echo(f"{where} ({layout})")
    dtype_text = ", ".join(f"{dtype} {count}" for dtype, count in report["dtypes"].items())
    click.echo(f"tensors: {report['tensors']} ({_mib(report['bytes'])}; {dtype_text})")
    if report["stamp"] is None:
        click.echo("stamp: none (not an xtf checkpoint; convert it with xtf convert)")
        return
    origin = f" (first stamped {report['origin']})" if report["origin"] else ""
    click.echo(f"stamp: {report['stamp']}{origin}")
    click.echo(f"spec: {json.dumps(report['spec'], sort_keys=True)}")
    if "ignored" in report:
        items = report["ignored"] if isinstance(report["ignored"], list) else []
        names = [
            f"{i.get('at') + '.' if i.get('at') else ''}{i.get('option')}={i.get('value')!r}" for i in items
        ]
        click.echo(f"ignored when built (as its release did): {', '.join(names) or report['ignored']}")
    click.echo(f"applied migrations: {len(report['migrations']) or 'none'}")
    for record in report["migrations"]:
        click.echo(
            f"  {record.get('from')} -> {record.get('to')}  {record.get('direction')}  {record.get('id')}"
        )
    if "pending_error" in report:
        click.echo(f"pending: cannot migrate to {report['installed']}: {report['pending_error']}")
    elif report["pending"]:
        click.echo(f"pending to {report['installed']}: {len(report['pending'])} step(s); run xtf migrate")
        for record in report["pending"]:
            click.echo(f"  {record['from']} -> {record['to']}  {record['summary']}")
    else:
        click.echo(f"pending to {report['installed']}: none")


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
    rows = [
        {
            "id": step.id,
            "from": str(step.down_revision),
            "to": str(step.revision),
            "reversible": step.reversible,
            "irreversible_reason": step.irreversible_reason,
            "summary": step.summary,
            "module": step.module,
        }
        for step in steps
    ]
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo("no migration steps: every checkpoint of this lineage shares one layout")
    for row in rows:
        reversibility = "reversible" if row["reversible"] else f"irreversible: {row['irreversible_reason']}"
        click.echo(f"{row['from']} -> {row['to']}  {row['id']}  ({reversibility})  {row['summary']}")


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
    from xtf_converters import dcp, xtransformers

    if dcp.is_dcp_checkpoint(src):
        if target is not None or config_path is None:
            raise click.UsageError("a DCP checkpoint is imported: give --config CONFIG.json (and no --to)")
        release = xtransformers.parse_source(source) if source is not None else None
        if source is not None and release is None:
            raise click.UsageError(
                "--from on a DCP checkpoint needs a release: --from x-transformers==RELEASE"
            )
        report = dcp.convert(
            src, output, config=xtransformers.read_config(config_path), key=key, release=release
        )
        text = (
            f"{report['source']} (DCP, model state at {report['state_dict_at']!r}) -> {report['output']}: "
            f"stamped {report['stamp']}, {report['tensors']} tensors ({report['skipped']} other tensors not read)"
        )
        if as_json:
            _print_json(report)
        else:
            click.echo(text)
        return
    if (source is None) == (target is None):
        raise click.UsageError("give exactly one of --from (import) or --to (export)")
    if source is not None:
        if config_path is None:
            raise click.UsageError("--from needs --config CONFIG.json")
        if into is not None:
            raise click.UsageError("--into goes with --to (export into a copy of the original pickle)")
        report = xtransformers.convert(
            src,
            output,
            release=xtransformers.parse_source(source),
            config=xtransformers.read_config(config_path),
            key=key,
            prefix=prefix,
        )
        from xtf_converters.release_kwargs import describe

        text = f"{report['source']} -> {report['output']}: stamped {report['stamp']} ({report['why']})"
        if report["prefix"]:
            text += f"\nmodel taken from under the prefix {report['prefix']!r}"
        for item in report["renamed"]:
            text += f"\nread {item['option']!r} as {' + '.join(item['as'])} (its name in later releases)"
        if report["ignored"]:
            text += (
                f"\nignored, as x-transformers {report['stamp'].partition('==')[2]} did: "
                f"{describe(report['ignored'])} (recorded under xtf.ignored)"
            )
    else:
        release = xtransformers.parse_source(target)
        if release is None:
            raise click.UsageError("--to needs a release: --to x-transformers==RELEASE")
        if into is None and prefix is not None:
            raise click.UsageError("--prefix on an export goes with --into ORIGINAL.pt")
        report = xtransformers.export(src, output, release=release, into=into, key=key, prefix=prefix)
        text = f"{report['source']} ({report['from']}) -> {report['output']} for {report['to']}; config in {report['config']}"
        if into is not None:
            text += (
                f"\n{report['replaced']} tensors under {report['prefix']!r} replaced in a copy of {report['into']}"
                f" ({report['state_dict_at']}); {report['kept']} other tensors and every other entry kept"
            )
    if as_json:
        _print_json(report)
    else:
        click.echo(text)


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
    from xtf_converters.xtransformers import check_release
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
    from xtf_core.chain.compat import compat_report, layout_ranges
    from xtf_core.chain.graph import default_chain
    from xtf_core.chain.plan import checkpoint_stamp
    from xtf_core.checkpoint.header import read_checkpoint_headers

    chain = default_chain()
    ranges = layout_ranges(chain)
    nodes = list(chain.nodes)
    symbols = {"direct": "=", "at load": "L", "migrate": "M", "no": "-"}
    report = compat_report(chain)
    if ckpt is not None:
        headers = read_checkpoint_headers(ckpt)
        stamp, _ = checkpoint_stamp(headers)
        report = compat_report(chain, stamp, str(headers.path), str(ckpt))
    matrix = report["matrix"]
    if as_json:
        _print_json(report)
        return
    width = max(len(r) for r in ranges.values())
    click.echo(f"installed: {chain.installed}; {len(nodes)} layouts, oldest first")
    click.echo("rows: the release reading; columns: the layout a file is stamped in (numbered as the rows)")
    click.echo(
        "  = direct (same layout)   L migrated in memory at load   M xtf migrate --to first   - not at all"
    )
    header = " " * (width + 5) + " ".join(f"{i + 1:>2}" for i in range(len(nodes)))
    click.echo(header)
    for i, library in enumerate(nodes):
        cells = " ".join(f"{symbols[matrix[str(library)][str(s)]]:>2}" for s in nodes)
        click.echo(f"{i + 1:>2}  {ranges[library]:<{width}}  {cells}")
    click.echo(report["outside"]["older"])
    click.echo(report["outside"]["newer"])
    if ckpt is not None:
        file = report["file"]
        click.echo(f"\n{file['path']}: stamped {file['stamp']}; can be brought to:")
        for target in file["targets"]:
            click.echo(f"  {target['release']:<{width}}  {target['kind']}: {target['detail']}")


@main.command()
@click.argument("folder", type=PATH)
@click.option("-o", "--output", type=PATH, required=True, help="The single file to write.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def consolidate(folder: Path, output: Path, as_json: bool) -> None:
    """Join a sharded checkpoint folder (e.g. from xtf_core.distributed.save) into one stamped file."""
    from xtf_core.distributed.consolidate import consolidate as join

    report = join(folder, output)
    if as_json:
        _print_json(report)
    else:
        click.echo(
            f"{report['source']} ({report['shards']} shards, {report['tensors']} tensors, {_mib(report['bytes'])}) "
            f"-> {report['output']}: stamped {report['stamp']}"
        )


if __name__ == "__main__":
    main()
