"""The ``tunewise`` command line: a thin Typer app over the library.

Each verb lives in a small module of this package and calls one public library function, then
renders the result with rich. A :class:`~tunewise.errors.UserError` anywhere below becomes one
red line on stderr and exit code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
import warnings

import click
import typer
from typer.core import TyperGroup

from tunewise.errors import UserError
from tunewise.fsio import is_disk_full
from tunewise.ladder.interrupt import SIGTERM_EXIT_CODE, Terminated


class _Group(TyperGroup):
    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except UserError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except OSError as err:
            if not is_disk_full(err):
                raise
            # A write outside the atomic helpers: still one line, never a traceback.
            where = f" writing {err.filename}" if err.filename else ""
            click.echo(f"error: disk full{where}: {err.strerror}", err=True)
            sys.exit(2)
        except Terminated:
            # SIGTERM, handled like Ctrl-C where a command knows how (the ladder says what was
            # kept); the exit status says which signal stopped it, as the shell's would.
            sys.exit(SIGTERM_EXIT_CODE)


# bitsandbytes warns on import that an optional CPU kernel package is missing; it falls back to its
# own CPU path, which is what QLoRA here uses, so the warning only confuses.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
# transformers 5 deprecates a property that its own Trainer still reads; users cannot act on it.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

app = typer.Typer(
    cls=_Group,
    name="tunewise",
    help="Decide whether to fine-tune an LLM, then do it right.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module registers its verbs on `app` (order = order in --help).
from tunewise.cli import (  # noqa: E402
    advise_cmd,
    data_cmd,
    eval_cmd,
    models_cmd,
    registry_cmd,
    report_cmd,
    serve_cmd,
    traffic_cmd,
    train_cmd,
    workflow_cmd,
)

for _module in (
    workflow_cmd,
    models_cmd,
    data_cmd,
    train_cmd,
    eval_cmd,
    report_cmd,
    advise_cmd,
    registry_cmd,
    serve_cmd,
    traffic_cmd,
):
    _module.register(app)


def main() -> None:
    app()
