"""Advice verbs: ``tunewise plan`` (memory planner); room for ``advise`` and ``init``.

Each verb is one function below, registered in :func:`register`; add a verb by writing its
function and one ``app.command(...)`` line.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from tunewise.progress import make_console
from tunewise.runtime.models import DEFAULT_MODEL

if TYPE_CHECKING:
    from tunewise.train.plan import MemoryPlan

console = make_console()


def plan_cmd(
    model: str = typer.Option(
        DEFAULT_MODEL, "--model", "-m", help="built-in name, local HF directory or hub id"
    ),
    method: str = typer.Option("lora", "--method", help="lora | qlora | full"),
    seq_len: int = typer.Option(512, "--seq-len", help="tokens per example after padding"),
    batch: int = typer.Option(1, "--batch", help="micro-batch size per device"),
    r: int = typer.Option(16, "--r", help="LoRA rank"),
    target_modules: str = typer.Option(
        "all-linear", "--target", help="LoRA targets: all-linear | qv | attn | mlp"
    ),
    grad_checkpointing: bool = typer.Option(
        False,
        "--grad-checkpointing/--no-grad-checkpointing",
        help="recompute activations in backward",
    ),
    device: str = typer.Option(
        "gpu", "--device", help="gpu (bf16 autocast) | cpu (fp32, peak RSS)"
    ),
    answer_tokens: int = typer.Option(
        None,
        "--answer-tokens",
        help="labelled (answer) tokens per example: tunewise computes logits only there "
        "(default: every position)",
    ),
    shared_prefix: int = typer.Option(
        0,
        "--shared-prefix",
        help="tokens every example starts with (the system prompt): train.shared_prefix runs "
        "them once per batch, not once per row (default 0: none)",
    ),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
) -> None:
    """Estimate training memory (weights, gradients, optimizer, activations) and which GPUs fit.

    Reads only config.json (local dir, converted built-in, or a built-in table of well-known hub
    ids such as meta-llama/Llama-2-7b-hf), so it works offline and for models you have not
    downloaded.
    """
    from tunewise.train.plan import plan  # lazy: keeps --help fast

    p = plan(
        model,
        method=method,  # type: ignore[arg-type]
        seq_len=seq_len,
        batch=batch,
        lora_r=r,
        target_modules=target_modules,
        grad_checkpointing=grad_checkpointing,
        device=device,  # type: ignore[arg-type]
        answer_tokens=answer_tokens,
        shared_prefix=shared_prefix,
    )
    if as_json:
        typer.echo(json.dumps(p.to_json(), indent=2))
        return
    _print_plan(p)


def _print_plan(p: MemoryPlan) -> None:
    """The plan as a table of parts, then which GPUs fit and what to try when none does."""
    from tunewise.train.plan import GIB, min_gpus_zero3  # lazy: keeps --help fast

    trainable = f"{p.n_trainable / 1e6:,.1f}M trainable ({100 * p.n_trainable / p.n_params:.2f}%)"
    shared = f" (shared prefix {p.shared_prefix})" if p.shared_prefix else ""
    console.print(
        f"[bold]{p.model}[/] ({p.n_params / 1e9:.2f}B params, {trainable}) - {p.method} on "
        f"{p.device}, batch {p.batch} x seq {p.seq_len}{shared}, grad checkpointing "
        f"{'on' if p.grad_checkpointing else 'off'}"
    )
    console.print(f"[dim]dimensions from {p.source}[/]")
    table = Table(show_header=True)
    table.add_column("part")
    table.add_column("GiB", justify="right")
    for name, value in p.parts.items():
        table.add_row(name.replace("_", " "), f"{value / GIB:.2f}")
    label = "total (peak RSS)" if p.device == "cpu" else "total"
    table.add_row(f"[bold]{label}[/]", f"[bold]{p.total_gib:.2f}[/]")
    console.print(table)
    for fit in p.fits:
        mark = "[green]fits[/]" if fit["fits"] else "[red]does not fit[/]"
        console.print(f"  {fit['gpu']}: {mark} ({fit['headroom_gib']:+.1f} GiB headroom)")
    if p.fits and not any(f["fits"] for f in p.fits):
        n = min_gpus_zero3(p)
        hint = (
            f"about {n} x 80 GB with FSDP / DeepSpeed ZeRO-3 sharding"
            if n
            else "shard and checkpoint"
        )
        console.print(
            f"  [yellow]no single GPU fits[/]: {hint}; or try --method qlora / --grad-checkpointing"
        )
    elif p.fits and not p.grad_checkpointing and not p.fits[0]["fits"]:
        console.print(
            "  [dim]--grad-checkpointing trades ~30% more compute for most of the activation "
            "memory[/]"
        )
    for note in p.assumptions:
        console.print(f"  [dim]- {note}[/]")


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the top-level app."""
    app.command("plan")(plan_cmd)
