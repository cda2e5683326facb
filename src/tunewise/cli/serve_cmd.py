"""``tunewise serve`` (OpenAI-compatible multi-adapter server) and ``tunewise export ...``."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from tunewise.progress import make_console

console = make_console()
export_app = typer.Typer(
    help="Export registry versions: merged weights, or a vLLM multi-LoRA layout.",
    no_args_is_help=True,
)


def serve_command(
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to bind (loopback by default)."
    ),
    port: int = typer.Option(8000, "--port"),
    base: str = typer.Option(
        None, "--base", help="Base model (default: the embedded SmolLM2-135M)."
    ),
    adapters: list[str] = typer.Option(
        None,
        "--adapters",
        "--adapter",
        help="Preload: registry spec (name, name@alias, name:version) or name=PATH; "
        "repeat or comma-separate.",
    ),
    api_key: str = typer.Option(
        None,
        "--api-key",
        envvar="TUNEWISE_API_KEY",
        help="Require 'Authorization: Bearer KEY' (or set TUNEWISE_API_KEY).",
    ),
    max_loaded_adapters: int = typer.Option(
        8, "--max-loaded-adapters", help="LRU bound on resident adapters."
    ),
    batch_size: int = typer.Option(16, "--batch-size"),
    batch_window_ms: float = typer.Option(
        5.0, "--batch-window-ms", help="How long to collect a batch."
    ),
    qlora: bool = typer.Option(
        False, "--4bit", help="Load the base in 4-bit NF4 (QLoRA adapters)."
    ),
    threads: int = typer.Option(
        None, "--threads", help="torch CPU threads (default: torch's choice)."
    ),
    device: str = typer.Option(
        "auto",
        "--device",
        help="auto (a CUDA GPU, else mps, else the CPU) | cpu | cuda | cuda:N | mps. "
        "GPU weights are bf16 (fp16 without bf16), CPU weights fp32.",
    ),
) -> None:
    """Serve the base model and registry adapters with an OpenAI-compatible API."""
    from tunewise.serve import serve

    specs = [s.strip() for a in adapters or [] for s in a.split(",") if s.strip()]
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        console.print("[yellow]warning:[/] listening beyond loopback without --api-key")
    serve(
        base,
        host=host,
        port=port,
        adapters=specs,
        api_key=api_key,
        max_loaded_adapters=max_loaded_adapters,
        batch_size=batch_size,
        batch_window_ms=batch_window_ms,
        quantize_4bit=qlora,
        threads=threads,
        device=device,
    )


@export_app.command("merged")
def export_merged_cmd(
    spec: str = typer.Argument(..., help="NAME:VERSION (or NAME@ALIAS)."),
    out: Path = typer.Argument(..., help="Output directory (HF checkpoint, safetensors)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty OUT."),
) -> None:
    """Fold the adapter into its base (merge_and_unload) and write a standalone HF model."""
    from tunewise.export import export_merged

    res = export_merged(spec, out, force=force)
    console.print(
        f"wrote merged [bold]{res['spec']}[/] to {res['out']} (weights {res['weight_hash'][:12]}…)"
    )


@export_app.command("vllm")
def export_vllm_cmd(
    specs: list[str] = typer.Argument(..., help="Registry entries to serve together."),
    out: Path = typer.Option(Path("vllm-export"), "--out", help="Layout folder to write."),
    max_lora_rank: int = typer.Option(
        None, "--max-lora-rank", help="Default: smallest vLLM value ≥ every rank."
    ),
    max_loras: int = typer.Option(
        None, "--max-loras", help="Adapters per batch on the GPU (default: all)."
    ),
    max_cpu_loras: int = typer.Option(
        None, "--max-cpu-loras", help="Adapters cached in CPU memory."
    ),
    tensor_parallel_size: int = typer.Option(
        1, "--tensor-parallel-size", help="GPUs to shard the base over."
    ),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty OUT."),
) -> None:
    """Check adapters for vLLM and write a layout folder plus the `vllm serve` command."""
    from tunewise.export import export_vllm

    plan = export_vllm(
        specs,
        out,
        force=force,
        max_lora_rank=max_lora_rank,
        max_loras=max_loras,
        max_cpu_loras=max_cpu_loras,
        tensor_parallel_size=tensor_parallel_size,
    )
    for w in plan.warnings:
        console.print(f"[yellow]note:[/] {w}")
    console.print(f"wrote {out}{os.sep}serve.sh and {len(plan.adapters)} adapter(s); run:")
    typer.echo(plan.shell)


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the top-level app."""
    app.command("serve")(serve_command)
    app.add_typer(export_app, name="export")
