"""The `xtf` command line: parse options, call the library, print. Errors become one line, in one place."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import click

from xtf_core.errors import XtfError


class XtfGroup(click.Group):
    """Turns any XtfError raised by a verb into `error: <message>` on stderr and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except XtfError as exc:
            message = " ".join(str(exc).split())
            click.echo(f"error: {message}", err=True)
            ctx.exit(1)


def _print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


@click.group(cls=XtfGroup)
def main() -> None:
    """xtf: keep transformer checkpoints loadable forever."""


@main.command()
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(ckpt: Path, as_json: bool) -> None:
    """Show a checkpoint's stamp, spec, tensors, applied migrations and pending steps (reads headers only)."""
    from xtf_core.chain.graph import default_chain
    from xtf_core.chain.plan import checkpoint_stamp
    from xtf_core.checkpoint.header import read_checkpoint_headers
    from xtf_core.checkpoint.stamp import current_stamp, is_stamped, read_migrations, read_origin

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
        stamp, spec = checkpoint_stamp(headers)
        origin = read_origin(metadata, where)
        report.update(
            stamp=str(stamp),
            origin=f"{origin['lineage']}=={origin['version']}" if origin else None,
            spec=spec,
            migrations=read_migrations(metadata, where),
        )
        try:
            pending = default_chain().route(stamp)
            report["pending"] = [
                {**record, "summary": step.summary} for record, step in zip(pending.records(), pending.steps)
            ]
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
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write the migrated checkpoint here.")
@click.option("--in-place", is_flag=True, help="Rewrite CKPT itself, keeping CKPT.bak first.")
@click.option(
    "--to", "target", help='Target stamp: "0.1.0" (xtf) or "x-transformers==1.26.0"; default: installed.'
)
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def migrate(
    ckpt: Path, output: Path | None, in_place: bool, target: str | None, dry_run: bool, as_json: bool
) -> None:
    """Rewrite a checkpoint for another xtf release (default: the installed one)."""
    from xtf_core.chain.stream import migrate_file
    from xtf_core.checkpoint.stamp import Stamp

    if (output is None) == (not in_place):
        raise click.UsageError("give exactly one of -o OUT or --in-place")
    stamp = Stamp.parse(target) if target else None
    if dry_run or not sys.stderr.isatty():
        plan = migrate_file(ckpt, output, in_place=in_place, target=stamp, dry_run=dry_run)
    else:
        from xtf_core.chain.plan import plan_file

        total = plan_file(ckpt, stamp).output_bytes
        with click.progressbar(length=total, label="migrating", file=sys.stderr) as bar:
            plan = migrate_file(ckpt, output, in_place=in_place, target=stamp, progress=bar.update)
    if as_json:
        _print_json({**plan.to_json(), "written": None if dry_run else str(output or ckpt)})
        return
    click.echo("\n".join(plan.describe()))
    if dry_run:
        click.echo("dry run: nothing written")
    else:
        backup = f" (backup: {ckpt}.bak)" if in_place else ""
        click.echo(f"wrote {output or ckpt}{backup}")


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
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(ckpt: Path, as_json: bool) -> None:
    """Check that a checkpoint still computes what its stored fingerprint says."""
    from xtf_core.verification import verify_checkpoint

    result = verify_checkpoint(ckpt)
    if as_json:
        _print_json(result)
    else:
        click.echo(result["message"])
    if not result["ok"]:
        sys.exit(1)


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option(
    "--from",
    "source",
    metavar="x-transformers[==RELEASE]",
    help="Convert an unstamped x-transformers state dict (torch pickle).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="JSON of the constructor call, in spec form, with that release's kwargs.",
)
@click.option("--key", help="Where the state dict sits inside the pickle (default: found automatically).")
@click.option(
    "--to",
    "target",
    metavar="x-transformers==RELEASE",
    help="Export a stamped checkpoint as that release's plain state dict.",
)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The file to write.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def convert(
    src: Path,
    source: str | None,
    config_path: Path | None,
    key: str | None,
    target: str | None,
    output: Path,
    as_json: bool,
) -> None:
    """Stamp a legacy checkpoint (--from), or export a stamped one to an x-transformers release (--to)."""
    from xtf_converters import xtransformers

    if (source is None) == (target is None):
        raise click.UsageError("give exactly one of --from (import) or --to (export)")
    if source is not None:
        if config_path is None:
            raise click.UsageError("--from needs --config CONFIG.json")
        report = xtransformers.convert(
            src,
            output,
            release=xtransformers.parse_source(source),
            config=xtransformers.read_config(config_path),
            key=key,
        )
        text = f"{report['source']} -> {report['output']}: stamped {report['stamp']} ({report['why']})"
    else:
        release = xtransformers.parse_source(target)
        if release is None:
            raise click.UsageError("--to needs a release: --to x-transformers==RELEASE")
        report = xtransformers.export(src, output, release=release)
        text = f"{report['source']} ({report['from']}) -> {report['output']} for {report['to']}; config in {report['config']}"
    if as_json:
        _print_json(report)
    else:
        click.echo(text)


if __name__ == "__main__":
    main()
