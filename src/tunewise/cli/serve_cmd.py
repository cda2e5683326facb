"""``tunewise serve`` (OpenAI-compatible multi-adapter server) and ``tunewise export ...``."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from tunewise.progress import make_console

console = make_console()
export_app = typer.Typer(
    help="Export registry versions: merged weights, GGUF for llama.cpp/Ollama, or a vLLM layout.",
    no_args_is_help=True,
)


# The longer option declarations, kept apart so the command reads as what it does.
_ADAPTERS = typer.Option(
    None,
    "--adapters",
    "--adapter",
    help="Preload: registry spec (name, name@alias, name:version) or name=PATH; "
    "repeat or comma-separate.",
)
_API_KEY = typer.Option(
    None,
    "--api-key",
    envvar="TUNEWISE_API_KEY",
    help="Require 'Authorization: Bearer KEY' (or set TUNEWISE_API_KEY).",
)
_ADMIN_KEY = typer.Option(
    None,
    "--admin-key",
    envvar="TUNEWISE_ADMIN_KEY",
    help="Open /admin to 'Authorization: Bearer ADMIN_KEY' (or set TUNEWISE_ADMIN_KEY); "
    "must differ from --api-key. Without it /admin is off.",
)
_ALLOW_ADMIN = typer.Option(
    False,
    "--allow-admin",
    help="Open /admin without a key to loopback clients (loopback --host only).",
)
_ADAPTER_ROOTS = typer.Option(
    None,
    "--adapter-root",
    help="A folder admin 'load' may read adapter runs from (repeatable; default: none, "
    "so loading by path is off).",
)
_DEVICE = typer.Option(
    "auto",
    "--device",
    help="auto (a CUDA GPU, else mps, else the CPU) | cpu | cuda | cuda:N | mps. "
    "GPU weights are bf16 (fp16 without bf16), CPU weights fp32.",
)
_LOG_TRAFFIC = typer.Option(
    None,
    "--log-traffic",
    help="Write one JSONL record per answered chat request to DIR, PII scrubbed (default: off).",
)
_TRAFFIC_SAMPLE = typer.Option(
    1.0,
    "--traffic-sample",
    help="Share of requests logged, 0 < R <= 1, drawn per request (seed: $TUNEWISE_TRAFFIC_SEED).",
)
_TRAFFIC_MAX_MB = typer.Option(
    64.0, "--traffic-max-mb", help="Rotate the traffic log file at this size (MB, may be < 1)."
)
_TRAFFIC_KEEP_DAYS = typer.Option(
    None,
    "--traffic-keep-days",
    help="Delete closed traffic files older than D days, at start and at each rotation "
    "(default: keep all).",
)
_SHADOW = typer.Option(
    None,
    "--shadow",
    help="A challenger (NAME@ALIAS, NAME:V or a loaded adapter) that answers the same requests "
    "in the background, never delaying a response; its answers go to the traffic log "
    "(needs --log-traffic). Compare with `tunewise compare-traffic DIR`.",
)
_SHADOW_RATE = typer.Option(
    1.0,
    "--shadow-rate",
    help="Share of the logged requests the challenger also answers, 0 < R <= 1.",
)

_PREFIX_CACHE_MB = typer.Option(
    256,
    "--prefix-cache-mb",
    min=0,
    help="Memory for shared prompt prefixes' keys and values, kept per adapter across requests "
    "(0: off).",
)


def serve_command(
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to bind (loopback by default)."
    ),
    port: int = typer.Option(8000, "--port"),
    base: str = typer.Option(
        None, "--base", help="Base model (default: the embedded SmolLM2-135M)."
    ),
    adapters: list[str] = _ADAPTERS,
    api_key: str = _API_KEY,
    admin_key: str = _ADMIN_KEY,
    allow_admin: bool = _ALLOW_ADMIN,
    adapter_roots: list[Path] = _ADAPTER_ROOTS,
    max_loaded_adapters: int = typer.Option(
        8, "--max-loaded-adapters", help="LRU bound on resident adapters."
    ),
    batch_size: int = typer.Option(16, "--batch-size"),
    batch_window_ms: float = typer.Option(
        5.0, "--batch-window-ms", help="How long to collect a batch."
    ),
    prefix_cache_mb: float = _PREFIX_CACHE_MB,
    qlora: bool = typer.Option(
        False, "--4bit", help="Load the base in 4-bit NF4 (QLoRA adapters)."
    ),
    threads: int = typer.Option(
        None, "--threads", help="torch CPU threads (default: torch's choice)."
    ),
    device: str = _DEVICE,
    log_traffic: Path = _LOG_TRAFFIC,
    traffic_sample: float = _TRAFFIC_SAMPLE,
    traffic_max_mb: float = _TRAFFIC_MAX_MB,
    traffic_keep_days: float = _TRAFFIC_KEEP_DAYS,
    shadow: str = _SHADOW,
    shadow_rate: float = _SHADOW_RATE,
) -> None:
    """Serve the base model and registry adapters with an OpenAI-compatible API."""
    # lazy: fastapi, ~0.3 s; keeps --help fast
    from tunewise.serve.app import LOOPBACK_HOSTS, check_admin_options, serve
    from tunewise.serve.shadow import ShadowSettings
    from tunewise.serve.traffic import TrafficSettings

    traffic = None
    if log_traffic is not None:
        traffic = TrafficSettings(log_traffic, traffic_sample, traffic_max_mb, traffic_keep_days)
        traffic.check()  # before the model loads
    challenger = ShadowSettings(model=shadow, rate=shadow_rate) if shadow is not None else None
    if challenger is not None:
        challenger.check(logging_traffic=traffic is not None)

    specs = [s.strip() for a in adapters or [] for s in a.split(",") if s.strip()]
    roots = check_admin_options(  # before the model loads: a mistake costs a second
        host=host,
        api_key=api_key,
        admin_key=admin_key,
        allow_admin=allow_admin,
        roots=adapter_roots or [],
    )
    if host not in LOOPBACK_HOSTS and not api_key:
        console.print("[yellow]warning:[/] listening beyond loopback without --api-key")
    serve(
        base,
        host=host,
        port=port,
        adapters=specs,
        api_key=api_key,
        admin_key=admin_key,
        allow_admin=allow_admin,
        adapter_roots=roots,
        max_loaded_adapters=max_loaded_adapters,
        batch_size=batch_size,
        batch_window_ms=batch_window_ms,
        quantize_4bit=qlora,
        threads=threads,
        device=device,
        traffic=traffic,
        shadow=challenger,
        prefix_cache_mb=prefix_cache_mb,
    )


@export_app.command("merged")
def export_merged_cmd(
    spec: str = typer.Argument(..., help="NAME:VERSION (or NAME@ALIAS)."),
    out: Path = typer.Argument(..., help="Output directory (HF checkpoint, safetensors)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty OUT."),
) -> None:
    """Fold the adapter into its base (merge_and_unload) and write a standalone HF model."""
    from tunewise.export.vllm import export_merged  # lazy: keeps --help fast

    res = export_merged(spec, out, force=force)
    console.print(
        f"wrote merged [bold]{res['spec']}[/] to {res['out']} (weights {res['weight_hash'][:12]}…)"
    )


@export_app.command("gguf")
def export_gguf_cmd(
    spec: str = typer.Argument(..., help="NAME:VERSION (or NAME@ALIAS)."),
    out: Path = typer.Argument(..., help="Output file (.gguf); a Modelfile is written beside it."),
    quant: str = typer.Option("f16", "--quant", help="f16 | q8_0 | q4_0"),
    force: bool = typer.Option(False, "--force", help="Replace OUT and its Modelfile."),
) -> None:
    """Merge the adapter into its base; write GGUF (llama.cpp) and an Ollama Modelfile."""
    from tunewise.export.gguf import export_gguf  # lazy: numpy; keeps --help fast

    res = export_gguf(spec, out, quant=quant, force=force)
    for w in res["warnings"]:
        console.print(f"[yellow]note:[/] {w}")
    mib = res["bytes"] / 2**20
    console.print(
        f"wrote [bold]{res['spec']}[/] as {res['arch']} {res['quant']} GGUF to {res['out']} "
        f"({mib:.1f} MiB) and {res['modelfile']}"
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
    from tunewise.export.vllm import export_vllm  # lazy: keeps --help fast

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
