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
@click.option("--to-lock", is_flag=True, help="Target the lockfile's pinned release (upgrade or downgrade).")
@click.option(
    "--lockfile",
    "lockfile_path",
    type=click.Path(path_type=Path),
    help="With --to-lock: the lockfile (default: $XTF_LOCK, else ./xtf.lock).",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def migrate(
    ckpt: Path,
    output: Path | None,
    in_place: bool,
    target: str | None,
    to_lock: bool,
    lockfile_path: Path | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Rewrite a checkpoint for another xtf release (default: the installed one)."""
    from xtf_core.chain.stream import migrate_file
    from xtf_core.checkpoint.stamp import Stamp

    if (output is None) == (not in_place):
        raise click.UsageError("give exactly one of -o OUT or --in-place")
    if to_lock and target:
        raise click.UsageError("give --to VERSION or --to-lock, not both")
    if lockfile_path is not None and not to_lock:
        raise click.UsageError("--lockfile goes with --to-lock")
    lockfile = None
    if to_lock:
        from xtf_core.chain.graph import default_chain
        from xtf_core.lockfile import Lockfile

        lockfile = Lockfile.read(_lockfile_path(lockfile_path))
        stamp = lockfile.pin.target(default_chain())
    else:
        stamp = Stamp.parse(target) if target else None
    locked = lockfile.entry_for(ckpt) if lockfile is not None and in_place and not dry_run else None
    if dry_run or not sys.stderr.isatty():
        plan = migrate_file(ckpt, output, in_place=in_place, target=stamp, dry_run=dry_run)
    else:
        from xtf_core.chain.plan import plan_file

        total = plan_file(ckpt, stamp).output_bytes
        with click.progressbar(length=total, label="migrating", file=sys.stderr) as bar:
            plan = migrate_file(ckpt, output, in_place=in_place, target=stamp, progress=bar.update)
    if locked is not None:
        from xtf_core.locking import lock_checkpoints

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


# ------------------------------------------------------------------------------------------ lockfile


def _lockfile_path(option: Path | None) -> Path:
    from xtf_core.locking import lockfile_path

    return lockfile_path(option)


@main.command()
@click.argument("ckpts", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--pin",
    "pin_text",
    metavar="SPEC",
    help='Pin: "xtf==0.1.0" (default: installed) or "x-transformers==1.26.0".',
)
@click.option(
    "--lockfile",
    "lockfile_path",
    type=click.Path(path_type=Path),
    help="The lockfile (default: $XTF_LOCK, else ./xtf.lock).",
)
@click.option("--check", is_flag=True, help="Verify the pin and every locked file; exit 1 on any problem.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def lock(
    ckpts: tuple[Path, ...], pin_text: str | None, lockfile_path: Path | None, check: bool, as_json: bool
) -> None:
    """Create or update the lockfile (pin a release, lock checkpoints by sha256), or --check it."""
    from xtf_converters.xtransformers import check_release
    from xtf_core.lockfile import Lockfile
    from xtf_core.locking import check_lockfile, lock_checkpoints

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
@click.argument("ckpt", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the matrix as JSON.")
def compat(ckpt: Path | None, as_json: bool) -> None:
    """Which stamps each release reads directly, by migration, or not at all; for CKPT, where it can go."""
    from xtf_core.chain.graph import default_chain
    from xtf_core.chain.plan import checkpoint_stamp
    from xtf_core.checkpoint.header import read_checkpoint_headers
    from xtf_core.lockfile import layout_ranges, reading

    chain = default_chain()
    ranges = layout_ranges(chain)
    nodes = list(chain.nodes)
    symbols = {"direct": "=", "at load": "L", "migrate": "M", "no": "-"}
    matrix = {
        str(library): {str(stamp): reading(library, stamp, chain) for stamp in nodes} for library in nodes
    }
    report: dict = {
        "installed": str(chain.installed),
        "layouts": [{"node": str(node), "stamps": ranges[node]} for node in nodes],
        "matrix": {lib: {s: kind for s, (kind, _) in row.items()} for lib, row in matrix.items()},
        "outside": {
            "older": f"stamps older than {nodes[0]}: no release reads them (xtf convert refuses them)",
            "newer": f"stamps newer than {chain.installed}: need a newer xtf to migrate them down",
        },
    }
    if ckpt is not None:
        headers = read_checkpoint_headers(ckpt)
        stamp, _ = checkpoint_stamp(headers)
        targets = []
        for node in nodes:
            kind, detail = reading(node, stamp, chain)
            if kind == "migrate":
                detail = detail.replace("CKPT", str(ckpt)) + " -o OUT"
            targets.append({"release": ranges[node], "node": str(node), "kind": kind, "detail": detail})
        report["file"] = {"path": str(headers.path), "stamp": str(stamp), "targets": targets}
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
        cells = " ".join(f"{symbols[matrix[str(library)][str(s)][0]]:>2}" for s in nodes)
        click.echo(f"{i + 1:>2}  {ranges[library]:<{width}}  {cells}")
    click.echo(report["outside"]["older"])
    click.echo(report["outside"]["newer"])
    if ckpt is not None:
        file = report["file"]
        click.echo(f"\n{file['path']}: stamped {file['stamp']}; can be brought to:")
        for target in file["targets"]:
            click.echo(f"  {target['release']:<{width}}  {target['kind']}: {target['detail']}")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="The single file to write."
)
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
