"""The ``stitch`` group, shared options and error handling.

Bad input (StitchError) prints one line to stderr and exits with code 2; ``--debug`` shows the
traceback. Data goes to stdout, messages and progress to stderr.
"""

from __future__ import annotations

import sys

import click
from rich.console import Console

from ..errors import StitchError

err_console = Console(stderr=True)


class StitchGroup(click.Group):
    """Turns StitchError into a one-line message and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StitchError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=StitchGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="stitchcore")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """stitchcore: cut models at named nodes and stitch them together.

    \b
    Examples:
      stitch cuts timm:resnet18
      stitch plugins --json
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main() -> None:
    cli(prog_name="stitch")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
