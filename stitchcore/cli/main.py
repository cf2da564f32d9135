"""The ``stitch`` group, shared options and error handling.

Every error is one line on stderr, ``Error: …``, with exit code 2: bad input (StitchError), a
usage error (a missing argument, an unknown option or command: click would print three lines,
usage and a hint included; here the hint is folded into the line), and torch's refusal to read
a checkpoint that needs code (worded by ``weights.unsafe_checkpoint_error``, for loaders that do
not word it themselves). ``--debug`` shows the traceback of the first and the last. Data goes to
stdout, messages and progress to stderr.
"""

from __future__ import annotations

import pickle
import sys

import click
from rich.console import Console

from ..errors import StitchError
from ..weights import unsafe_checkpoint_error

__all__ = ["StitchGroup", "UsageError", "cli", "err_console", "main"]

#: Messages and progress on stderr. Messages are never wrapped by rich (``soft_wrap``): a
#: terminal wraps them itself, and a log file or a pipe keeps each message, paths
#: included, on one line (rich would break them at 80 columns there).
err_console = Console(stderr=True, soft_wrap=True)


class UsageError(click.ClickException):
    """A usage error shown as one line (``ClickException.show`` prints only ``Error: …``)."""

    exit_code = 2


def _one_line_usage(exc: click.UsageError) -> UsageError:
    where = exc.ctx.command_path if exc.ctx else "stitch"
    message = " ".join(exc.format_message().split())
    stop = "" if message.endswith((".", "!", "?")) else "."
    return UsageError(f"{message}{stop} See '{where} --help'.")


class StitchGroup(click.Group):
    """Turns StitchError and usage errors into a one-line message and exit code 2."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # bare `stitch`: the help text, as click shows it
        except click.UsageError as exc:  # an unknown option of the group itself
            raise _one_line_usage(exc) from exc

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:  # a command's arguments, or an unknown command
            raise _one_line_usage(exc) from exc
        except (StitchError, pickle.UnpicklingError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            error = unsafe_checkpoint_error(exc, "a checkpoint") or exc
            click.echo(f"Error: {error}", err=True)
            ctx.exit(getattr(error, "exit_code", 2))


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
