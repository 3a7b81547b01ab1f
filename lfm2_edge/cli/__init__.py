"""The ``lfm2-edge`` command line: one module per command, registered here in help order.

``chat`` (about images, locally or through ``--endpoint``), ``serve`` (an OpenAI-compatible
server), ``pull``, ``models`` and ``rm`` (the hub cache), ``info`` (llama.cpp's backends
and devices), ``doctor`` (this device, and the model that fits it), ``bench`` and ``batch`` (a
folder or manifest of images, one answer each).

Every user mistake ends in one line on stderr and exit code 2; ``--json`` gives one
JSON object on stdout for scripts. A command module imports what loads llama.cpp or the
web server inside its command's body, so ``lfm2-edge --help`` loads neither.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from lfm2_edge.cli import batch, bench, chat, doctor, info, models, pull, rm, serve, watch
from lfm2_edge.cli._common import app, err

__all__ = ["app", "main"]

app.command()(chat.chat)
app.command()(info.info)
app.command()(doctor.doctor)
app.command()(serve.serve)
app.command()(watch.watch)
app.command()(pull.pull)
app.command("models")(models.list_models)
app.command("rm")(rm.remove)
app.command()(bench.bench)
app.command()(batch.batch)


def main() -> None:
    """The entry point: usage errors are one line on stderr and exit code 2."""
    # typer vendors click; its exceptions live there (and are click's own in older typers)
    try:
        import typer._click.exceptions as click_errors
    except ImportError:  # pragma: no cover
        import click.exceptions as click_errors  # type: ignore[no-redef]

    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:  # `lfm2-edge` alone: the help
        sys.stdout.write(exc.ctx.get_help() + "\n")
        code = 0
    except click_errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "lfm2-edge"
        err.print(f"[bold red]error:[/] {escape(exc.format_message())} (see {where} --help)")
        code = exc.exit_code
    except typer.Abort:  # Ctrl-C outside an answer
        sys.stderr.write("\n")
        code = 130
    except click_errors.ClickException as exc:
        err.print(f"[bold red]error:[/] {escape(exc.format_message())}")
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else 0)
