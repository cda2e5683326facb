"""``tunewise train``: fine-tune the project's base model (LoRA, QLoRA or full)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from tunewise.config import load_project
from tunewise.errors import UserError
from tunewise.ladder.interrupt import sigterm_as_interrupt
from tunewise.progress import make_console
from tunewise.rundir import RunDir


def train(
    project: Optional[Path] = typer.Argument(  # noqa: UP045 - typer reads the annotation
        None, help="project.yaml (or its folder); not needed with --resume"
    ),
    method: str | None = typer.Option(
        None, "--method", "-m", help="lora | qlora | full (default: train.method)"
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="override a config key, e.g. --set train.lr=1e-4"
    ),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="where to write the run (default .tunewise/runs/METHOD-TIME)"
    ),
    resume: Path | None = typer.Option(
        None, "--resume", help="continue the run in this directory from its last checkpoint"
    ),
    train_file: Path | None = typer.Option(
        None, "--train-file", help="train on this JSONL instead of the project's split"
    ),
    val_file: Path | None = typer.Option(
        None, "--val-file", help="validate on this JSONL instead of the project's split"
    ),
    train_on: str | None = typer.Option(
        None, "--train-on", help="all | last: loss on every assistant turn or the last only"
    ),
    no_progress: bool = typer.Option(
        False, "--no-progress", help="no progress bar (logs still go to RUN/logs.jsonl)"
    ),
) -> None:
    """Fine-tune with the article's defaults: loss on assistant tokens only, validation loss with
    early stopping, an overfitting check on sampled generations, atomic checkpoints and resume.

    Works under `accelerate launch -m tunewise train ...` for several processes or GPUs.
    """
    # lazy: torch and transformers, ~3 s; keeps --help fast
    from tunewise.train.trainer import default_run_dir, load_run_config
    from tunewise.train.trainer import train as run_training

    if resume is not None:
        if overrides or method:
            raise UserError(
                "--resume continues a run with its own config; --set and --method are not allowed"
            )
        cfg, rec = load_run_config(resume)
        data = rec.get("data", {})
        target = resume
        args = {
            "method": rec.get("method"),
            "train_path": Path(data["train"]) if data.get("train") else None,
            "val_path": Path(data["val"]) if data.get("val") else None,
            "resume": True,
        }
    else:
        if project is None:
            raise UserError("give a project.yaml, or --resume RUN")
        if train_on is not None:
            overrides = [*overrides, f"train.train_on={train_on}"]
        cfg = load_project(project, overrides)
        chosen = method or cfg.train.method
        target = run_dir or default_run_dir(cfg, chosen)
        args = {"method": chosen, "train_path": train_file, "val_path": val_file}
    # SIGTERM (a batch scheduler, `timeout`, `kill`) stops the run as Ctrl-C does: run.json
    # records it as stopped, and the run resumes from its last checkpoint.
    with sigterm_as_interrupt():
        try:
            result = run_training(cfg, run_dir=target, progress=not no_progress, **args)
        except KeyboardInterrupt as exc:
            _say_how_to_resume(target, getattr(exc, "signal_name", "Ctrl-C"))
            raise
    _render(result)


def _say_how_to_resume(run_dir: Path, how: str) -> None:
    """One line after Ctrl-C or SIGTERM: what run.json now says, and the command that resumes."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    run = RunDir(run_dir)
    try:
        rec = run.read()
    except UserError:
        rec = None
    if rec is None:
        line = f"stopped ({how}) before {run_dir} was written; nothing to resume"
    else:
        said = " is recorded as stopped" if rec.get("status") == "stopped" else ""
        line = f"stopped ({how}): {run_dir}{said}; continue it with `{run.resume_command()}`"
    make_console(stderr=True).print(line, soft_wrap=True, markup=False, highlight=False)


def _render(rec: dict) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return
    console = make_console()
    table = Table(title=f"run ({rec['method']}): {rec['status']}", show_header=False)
    table.add_row("stop reason", str(rec.get("stop_reason")))
    table.add_row("steps", str(rec.get("global_step")))
    table.add_row(
        "train loss", f"{rec['train_loss']:.4f}" if rec.get("train_loss") is not None else "-"
    )
    best = rec.get("best_val_loss")
    table.add_row(
        "best val loss", f"{best:.4f} (step {rec.get('best_step')})" if best is not None else "-"
    )
    table.add_row("tokens/s", str(rec.get("tokens_per_s")))
    table.add_row("wall time", f"{rec.get('wall_time_s')} s")
    check, wall = rec.get("overfit_check_s"), rec.get("wall_time_s")
    if check and wall:
        table.add_row("overfitting check", f"{check} s ({100 * check / wall:.1f}% of wall time)")
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the top-level app."""
    app.command("train")(train)
