"""What ``make demo`` runs: the whole ladder on the ticket-triage project, then the advice.

1. ``tunewise models pull``: converts the embedded SmolLM2-135M-Instruct once (about 25 s).
2. ``tunewise data check`` on the tickets: errors, warnings, label and token statistics, then one
   greedy answer of the base model with the project's prompt (the starting point).
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
import re
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

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


def base_model_answer(project: Path) -> None:
    """Greedy answer of the base model to one ticket, with the project's prompt: the starting
    point."""
    import json

    import torch
    from transformers.utils import logging as hf_logging

    from tunewise.config import load_project
    from tunewise.runtime import models

    cfg = load_project(project)
    row = json.loads(cfg.data.train.read_text(encoding="utf-8").splitlines()[0])
    messages = [m for m in row["messages"][:-1] if m["role"] != "system"]
    messages.insert(0, {"role": "system", "content": cfg.task.system_prompt})
    expected = row["messages"][-1]["content"]

    console.rule("[bold cyan]base model, greedy, on one ticket", align="left")
    hf_logging.disable_progress_bar()  # one "Loading weights" bar says nothing useful here
    ref = models.resolve(cfg.model.base)
    tok = models.load_tokenizer(ref)
    model = models.load_model(ref)
    model.eval()
    prompt = tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    started = time.time()
    with torch.inference_mode():
        out = model.generate(
            **prompt,
            max_new_tokens=24,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    answer = tok.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    took = time.time() - started
    console.print(
        Panel(messages[-1]["content"], title="ticket (tickets.jsonl, line 1)", title_align="left")
    )
    console.print(
        Panel(expected, title="reference answer", title_align="left", border_style="green")
    )
    console.print(
        Panel(
            answer or "(empty)",
            title=f"{ref.name}, zero-shot ({took:.1f}s)",
            title_align="left",
            border_style="yellow",
        )
    )
    pattern = cfg.task.output_pattern
    ok_format = bool(pattern and re.fullmatch(pattern, answer))
    console.print(
        f"format {'[green]matches' if ok_format else '[red]does not match'}[/] the project's "
        "output pattern; "
        f"answer {'[green]correct' if answer == expected else '[red]not correct'}[/]. "
        "The baselines and the fine-tune are measured against this starting point."
    )


def main() -> int:
    project = HERE / "project.yaml"
    data = HERE / "data" / "tickets.jsonl"
    started = time.time()
    steps = [
        ("models", "pull"),
        ("data", "check", str(data), "--max-len", "384"),
        base_model_answer,
        ("run", str(project)),
        # An example volume: 20k tickets a day, ~300 tokens each, a frontier API at $5 per million
        # tokens against one small GPU at $1.20 an hour.
        (
            "advise",
            str(project),
            "--requests-per-day",
            "20000",
            "--tokens-per-request",
            "300",
            "--api-price",
            "5",
            "--gpu-price",
            "1.2",
        ),
    ]
    for args in steps:
        if callable(args):
            args(project)
            continue
        code = tunewise(*args)
        if code != 0:
            console.print(f"[red]tunewise {' '.join(args[:2])} exited with {code}[/]")
            return code
    console.rule(f"[bold green]demo finished in {time.time() - started:.0f}s", align="left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
