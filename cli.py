"""The `xtf` command line."""

import click


@click.group()
def main() -> None:
    """xtf: keep transformer checkpoints loadable forever."""
