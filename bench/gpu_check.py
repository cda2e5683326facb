"""The prepared GPU check: tunewise's real code paths on real model shapes, measured.

For each model shape (random weights, real dimensions, built from config with the embedded
SmolLM2 tokenizer; nothing is downloaded) it runs, through tunewise's own code:

* ``lora`` and ``full``: a few optimizer steps of ``tunewise.train.trainer.train`` (bf16 autocast
  on a GPU, as the device policy decides); ``full`` only where ``tunewise plan`` says it fits;
* ``qlora``: the same on an NF4 base, when bitsandbytes is installed;
* ``generate``: one batch of ``Engine.generate`` (the path of evaluation, judge and server);
* ``serve``: one ``POST /v1/chat/completions`` to ``tunewise.serve.app``'s app (FastAPI TestClient),
  on the first shape only.

It writes one JSON file: per stage the device and dtype the policy chose and the ones the loaded
model really has, trained tokens/s in the steady state (from the run's logs.jsonl, the first
steps left out), MFU, peak GPU memory against ``tunewise plan``'s estimate, and wall time. A
stage that fails is recorded with its error and the check goes on; the exit code is 1 if any
failed. It stops starting stages after ``--budget-s`` seconds, so it ends in time.

MFU = model FLOPs per second / the GPU's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s). Model FLOPs
per trained token: forward = 2 x (parameters of the decoder layers' linears) + 2 x layers x seq x
q_dim (causal attention, on average half the context) + 2 x vocab x hidden x (share of positions
with a label: tunewise computes logits only there); full fine-tuning costs 3 forwards (the
backward computes gradients for activations and weights), LoRA and QLoRA 2 (frozen weights need
no weight gradients) plus 6 x adapter parameters. Recomputation is not counted.

Usage:
    make gpu-check                                   # on the GPU machine (see the Makefile)
    python bench/gpu_check.py --device cpu --tiny    # the same code on tiny shapes, in CI
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded, ever
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Dense bf16 peaks from the vendors' datasheets (SXM parts), in FLOP/s.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}
# Real shapes: the planner's table of published config.json values (one source for both).
SHAPES = {
    "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
    "llama3-8b": "meta-llama/Meta-Llama-3-8B",
}
TINY = {  # the same two families, shrunk: untied Llama-3 style with GQA, tied SmolLM2 style
    "tiny-smollm2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    "tiny-llama3": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
}  # fmt: skip
ANSWER_WORDS = 24  # a short labelled answer, as in classification-style fine-tunes
WORDS = [
    "ticket",
    "invoice",
    "refund",
    "shipping",
    "account",
    "login",
    "crash",
    "billing",
    "priority",
    "urgent",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu (model.device)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes and few steps (CI, seconds)")
    ap.add_argument("--models", default=None, help="comma-separated shapes (default: all)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "gpu-check.json")
    ap.add_argument("--tokenizer", type=Path, default=None, help="folder with the tokenizer files")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per training stage")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per training example")
    ap.add_argument("--budget-s", type=float, default=360.0, help="start no stage after this")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument(
        "--export-tokenizer",
        type=Path,
        default=None,
        help="only write the embedded tokenizer's files to this folder (to carry to a GPU machine)",
    )
    a = ap.parse_args(argv)
    a.steps = a.steps or (3 if a.tiny else 10)
    a.batch = a.batch or (2 if a.tiny else 4)
    a.seq_len = a.seq_len or (64 if a.tiny else 1024)
    names = list(TINY if a.tiny else SHAPES)
    a.models = a.models.split(",") if a.models else names
    unknown = [m for m in a.models if m not in names]
    if unknown:
        ap.error(f"--models: unknown {unknown}; known: {names}")
    return a


# --- the machine ------------------------------------------------------------------------------


def machine(peak_tflops: float | None) -> dict[str, Any]:
    """Versions, the GPU and its bf16 peak (None where unknown: no MFU then)."""
    import importlib.metadata as md

    import torch

    from tunewise.runtime import device

    caps = device.detect()
    info: dict[str, Any] = {"capabilities": dataclasses.asdict(caps), "versions": {}}
    for pkg in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "fastapi"):
        try:
            info["versions"][pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info["versions"][pkg] = None
    peak = peak_tflops * 1e12 if peak_tflops else None
    if caps.cuda:
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)}
        if peak is None:
            peak = next((v for k, v in PEAK_BF16.items() if k in props.name), None)
    info["peak_flops"] = peak
    return info


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peak() -> float | None:
    """Free what the last stage left and restart the peak; returns GiB still allocated (a leak)."""
    import torch

    gc.collect()
    if not torch.cuda.is_available():
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return round(torch.cuda.memory_allocated() / 2**30, 2)


def _peak_memory() -> dict[str, float]:
    """Peak GPU memory since the last reset; on the CPU, the process's peak RSS so far."""
    import resource

    import torch

    if torch.cuda.is_available():
        return {
            "allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
        }
    return {
        "process_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    }


# --- models and data --------------------------------------------------------------------------


def find_tokenizer(given: Path | None) -> Path:
    """The embedded SmolLM2 tokenizer: a given folder, else the converted embedded model."""
    if given is not None:
        if not (given / "tokenizer_config.json").is_file():
            raise SystemExit(f"--tokenizer {given}: no tokenizer_config.json there")
        return given
    from tunewise.errors import UserError
    from tunewise.runtime import models

    try:
        return models.resolve(models.DEFAULT_MODEL).path
    except UserError as exc:
        raise SystemExit(
            f"no tokenizer: {exc}. Pass --tokenizer DIR (`make gpu-check-prep` writes one to "
            "bench/out/gpu-check/tokenizer)"
        ) from None


def shape_config(name: str, tokenizer: Any, tiny: bool) -> Any:
    """A LlamaConfig of the named shape; token ids from the embedded tokenizer."""
    from transformers import LlamaConfig

    if tiny:
        dims = dict(TINY[name], vocab_size=len(tokenizer))
    else:
        from tunewise.train.plan import KNOWN_CONFIGS

        dims = dict(KNOWN_CONFIGS[SHAPES[name]])
        dims["vocab_size"] = max(dims["vocab_size"], len(tokenizer))
    return LlamaConfig(
        **dims,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_checkpoint(name: str, tok_dir: Path, work: Path, tiny: bool, on_gpu: bool) -> Path:
    """Random weights of the shape, saved as a Hugging Face checkpoint (bf16 on a GPU machine)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    config = shape_config(name, tokenizer, tiny)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    torch.manual_seed(0)
    # Initialising 8B parameters on the CPU takes minutes; on the GPU, seconds.
    with torch.device("cuda" if on_gpu else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    out = work / name
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model
    return out


def write_data(path: Path, tokenizer: Any, n: int, seq_len: int) -> tuple[int, int]:
    """``n`` chat examples of about ``seq_len`` tokens; returns (longest, answer tokens)."""
    rng = random.Random(0)
    answer = " ".join(rng.choice(WORDS) for _ in range(ANSWER_WORDS))
    base = [{"role": "user", "content": ""}, {"role": "assistant", "content": answer}]

    def length(msgs: list[dict[str, str]]) -> int:
        return len(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=False))

    empty = length(base)
    probe = [{"role": "user", "content": " ".join(WORDS * 10)}, base[1]]
    per_word = (length(probe) - empty) / (len(WORDS) * 10)
    words = max(1, int((seq_len - empty) / per_word))
    rows, longest = [], 0
    for _ in range(n):
        user = " ".join(rng.choice(WORDS) for _ in range(words))
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        longest = max(longest, length(msgs))
        rows.append(json.dumps({"messages": msgs}))
    path.write_text("\n".join(rows) + "\n")
    answer_tokens = len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1  # + EOT
    return longest, answer_tokens


# --- FLOPs and throughput ---------------------------------------------------------------------


def flops_per_token(model_dir: Path, method: str, seq_len: int, label_share: float) -> float:
    """Model FLOPs per trained token (see the module docstring)."""
    from tunewise.train.plan import lora_params, model_dims

    d = model_dims(model_dir)
    forward = (
        2 * d.linear_params
        + 2 * d.num_hidden_layers * seq_len * d.q_dim
        + 2 * d.vocab_size * d.hidden_size * label_share
    )
    if method == "full":
        return 3 * forward
    return 2 * forward + 6 * lora_params(d, 16)


def steady_tokens_per_s(logs: Path, skip: int) -> float | None:
    """Trained tokens/s between the ``skip``-th logged step and the last (warm-up left out)."""
    rows = (
        [json.loads(x) for x in logs.read_text().splitlines() if x.strip()]
        if logs.is_file()
        else []
    )
    rows = [r for r in rows if "loss" in r and "time" in r]
    if len(rows) < 2:
        return None
    first = rows[min(skip, len(rows) - 2)]
    dt = rows[-1]["time"] - first["time"]
    return (rows[-1]["tokens_seen"] - first["tokens_seen"]) / dt if dt > 0 else None


# --- stages -----------------------------------------------------------------------------------


def _project(model_dir: Path, a: argparse.Namespace, method: str, max_len: int, root: Path) -> Any:
    from tunewise.config import ProjectConfig

    return ProjectConfig.model_validate(
        {
            "name": "gpu-check",
            "root": root,
            "data": {"train": str(root / "train.jsonl"), "max_len": max_len},
            "model": {"base": str(model_dir), "device": a.device},
            "train": {
                "method": method,
                "max_steps": a.steps,
                "batch_size": a.batch,
                "eval_every": 1,  # a logged step each step: the steady-state rate needs them
                "save_every": 10**6,  # only the Trainer's own end-of-run checkpoint
                "warmup_ratio": 0.0,
                "lr": 1e-5,
            },
        }
    )


def train_stage(ctx: dict[str, Any], method: str) -> dict[str, Any]:
    """A few optimizer steps through tunewise's trainer, measured."""
    from tunewise.runtime import device
    from tunewise.train import trainer as trainer_mod
    from tunewise.train.plan import plan

    a, model_dir, root = ctx["args"], ctx["model_dir"], ctx["root"]
    gpu = ctx["caps"].cuda and a.device != "cpu"
    estimate = plan(
        model_dir,
        method=method,
        seq_len=ctx["longest"],
        batch=a.batch,
        device="gpu" if gpu else "cpu",
        answer_tokens=ctx["answer_tokens"],
    )
    res: dict[str, Any] = {"plan_gib": round(estimate.total_gib, 2)}
    if gpu and estimate.total_gib > 0.9 * ctx["machine"]["gpu"]["memory_gib"]:
        return {**res, "status": "skipped", "reason": "tunewise plan says it does not fit"}
    observed: dict[str, Any] = {}
    build = trainer_mod.build_model

    def observe(*args: Any, **kwargs: Any) -> Any:  # the model the Trainer gets, as loaded
        model = build(*args, **kwargs)
        observed.update(device.where_is(model))
        return model

    cfg = _project(model_dir, a, method, ctx["longest"] + 8, root)
    run_dir = root / f"run-{method}"
    res["allocated_before_gib"] = _reset_peak()
    trainer_mod.build_model = observe
    try:
        t0 = time.perf_counter()
        record = trainer_mod.train(
            cfg, run_dir=run_dir, train_path=root / "train.jsonl", progress=False
        )
        _sync()
        res["seconds_in_train"] = round(time.perf_counter() - t0, 2)
    finally:
        trainer_mod.build_model = build
    res["peak_memory"] = _peak_memory()
    res["placement"] = record.get("placement")
    res["observed"] = {k: observed.get(k) for k in ("device", "dtype", "dtypes", "nf4_elements")}
    res["train_loss"] = record.get("train_loss")
    res["steps"] = record.get("global_step")
    rate = steady_tokens_per_s(run_dir / "logs.jsonl", skip=1 if a.tiny else 2)
    res["tokens_per_s"] = round(rate, 1) if rate else record.get("tokens_per_s")
    share = ctx["answer_tokens"] / ctx["longest"]
    res["model_flops_per_token"] = flops_per_token(model_dir, method, ctx["longest"], share)
    peak = ctx["machine"]["peak_flops"]
    if peak and res["tokens_per_s"] and gpu:
        res["mfu"] = round(res["model_flops_per_token"] * res["tokens_per_s"] / peak, 4)
    if "reserved_gib" in res["peak_memory"]:
        res["plan_over_peak_reserved"] = round(
            estimate.total_gib / max(res["peak_memory"]["reserved_gib"], 1e-9), 2
        )
    shutil.rmtree(run_dir, ignore_errors=True)  # a full run's checkpoint is tens of GB
    return {**res, "status": "ok"}


def generate_stage(ctx: dict[str, Any]) -> dict[str, Any]:
    """One batch through ``Engine.generate``; the engine stays for the server stage."""
    from tunewise.runtime import device, models
    from tunewise.runtime.engine import Engine, GenRequest

    a = ctx["args"]
    placement = device.choose(device.detect(), purpose="infer", device=a.device)
    before = _reset_peak()
    engine = Engine(models.resolve(str(ctx["model_dir"])), placement=placement, batch_size=16)
    ctx["engine"] = engine
    n_new = 4 if a.tiny else 64
    rng = random.Random(1)
    reqs = [
        GenRequest(
            [{"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(20 + i))}],
            max_new_tokens=n_new,
        )
        for i in range(16)
    ]
    engine.generate(reqs[:1])  # warm-up: kernels, allocator
    _sync()
    t0 = time.perf_counter()
    out = engine.generate(reqs)
    _sync()
    dt = time.perf_counter() - t0
    tokens = sum(r.completion_tokens for r in out)
    return {
        "status": "ok",
        "placement": placement.to_dict(),
        "observed": {k: v for k, v in device.where_is(engine.model).items() if k != "devices"},
        "requests": len(reqs),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / dt, 1),
        "seconds": round(dt, 3),
        "peak_memory": _peak_memory(),
        "allocated_before_gib": before,
    }


def serve_stage(ctx: dict[str, Any]) -> dict[str, Any]:
    """One chat completion through the server's app, over the generate stage's engine."""
    from fastapi.testclient import TestClient

    from tunewise.registry.store import Registry
    from tunewise.serve.app import ServeSettings, create_app

    engine = ctx.get("engine")
    if engine is None:
        return {"status": "skipped", "reason": "no engine (the generate stage did not run)"}
    app = create_app(engine, settings=ServeSettings(), registry=Registry())
    body = {"model": "base", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    with TestClient(app) as client:
        t0 = time.perf_counter()
        resp = client.post("/v1/chat/completions", json=body)
        dt = time.perf_counter() - t0
    data = resp.json()
    ok = resp.status_code == 200 and bool(data.get("choices"))
    return {
        "status": "ok" if ok else "failed",
        "http_status": resp.status_code,
        "usage": data.get("usage"),
        "latency_s": round(dt, 3),
        "device": engine.placement.device,
        "dtype": engine.placement.dtype,
        **({} if ok else {"error": json.dumps(data)[:500]}),
    }


# --- driver -----------------------------------------------------------------------------------


def run_stage(
    report: dict[str, Any], a: argparse.Namespace, name: str, fn: Callable[[], dict]
) -> None:
    """Run one stage unless the budget is spent; record its result or its error, then save."""
    entry: dict[str, Any] = {"stage": name}
    elapsed = time.perf_counter() - report["_t0"]
    if elapsed > a.budget_s:
        entry.update(status="skipped", reason=f"time budget ({a.budget_s:.0f} s) spent")
    else:
        t0 = time.perf_counter()
        try:
            entry.update(fn())
        except Exception as exc:  # one stage's failure (an OOM, say) must not hide the others
            entry.update(
                status="failed",
                error=f"{type(exc).__name__}: {exc}"[:1000],
                traceback=traceback.format_exc(limit=6)[-2000:],
            )
            _reset_peak()
        entry["wall_s"] = round(time.perf_counter() - t0, 2)
    report["stages"].append(entry)
    print(f"[{time.perf_counter() - report['_t0']:6.1f}s] {name}: {entry['status']}"
          + (f" ({entry.get('reason') or entry.get('error')})" if entry["status"] != "ok" else ""),
          flush=True)  # fmt: skip
    save(report, a.out)


def save(report: dict[str, Any], out: Path) -> None:
    from tunewise.fsio import atomic_write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, {k: v for k, v in report.items() if not k.startswith("_")})


def check_model(report: dict[str, Any], a: argparse.Namespace, name: str, shared: dict) -> None:
    """Every stage for one shape; the checkpoint is deleted afterwards (8B is 16 GB)."""
    from transformers import AutoTokenizer

    root = shared["work"] / f"{name}-project"
    root.mkdir(parents=True, exist_ok=True)
    ctx: dict[str, Any] = {"args": a, "root": root, **shared}

    def build() -> dict[str, Any]:
        t0 = time.perf_counter()
        ctx["model_dir"] = build_checkpoint(
            name, shared["tok_dir"], shared["work"], a.tiny, shared["gpu"]
        )
        tok = AutoTokenizer.from_pretrained(ctx["model_dir"])
        n = a.steps * a.batch
        ctx["longest"], ctx["answer_tokens"] = write_data(root / "train.jsonl", tok, n, a.seq_len)
        return {"status": "ok", "seconds": round(time.perf_counter() - t0, 1),
                "seq_len": ctx["longest"], "answer_tokens": ctx["answer_tokens"]}  # fmt: skip

    run_stage(report, a, f"{name}/build", build)
    if "model_dir" not in ctx:
        return
    run_stage(report, a, f"{name}/lora", lambda: train_stage(ctx, "lora"))
    run_stage(report, a, f"{name}/full", lambda: train_stage(ctx, "full"))
    if ctx["caps"].bitsandbytes:
        run_stage(report, a, f"{name}/qlora", lambda: train_stage(ctx, "qlora"))
    else:
        report["stages"].append({"stage": f"{name}/qlora", "status": "skipped",
                                 "reason": "bitsandbytes is not installed"})  # fmt: skip
    run_stage(report, a, f"{name}/generate", lambda: generate_stage(ctx))
    if not shared.get("served"):
        shared["served"] = True
        run_stage(report, a, f"{name}/serve", lambda: serve_stage(ctx))
    ctx.pop("engine", None)
    _reset_peak()
    shutil.rmtree(ctx["model_dir"], ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.export_tokenizer is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(find_tokenizer(a.tokenizer)).save_pretrained(
            a.export_tokenizer
        )
        print(f"wrote the embedded tokenizer to {a.export_tokenizer}")
        return 0
    report: dict[str, Any] = {"_t0": time.perf_counter(), "args": {}, "stages": []}
    report["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}
    work = a.work or Path(tempfile.mkdtemp(prefix="tunewise-gpu-check-"))
    # Registry, eval cache and converted models of this check live in its scratch folder.
    os.environ["TUNEWISE_HOME"] = str(work / "home")
    os.environ.setdefault("TUNEWISE_MODELS", str(work / "models"))
    from tunewise.runtime import device

    report["machine"] = machine(a.peak_tflops)
    caps = device.detect()
    shared = {
        "work": work,
        "tok_dir": find_tokenizer(a.tokenizer),
        "caps": caps,
        "machine": report["machine"],
        "gpu": caps.cuda and a.device != "cpu",
    }
    if a.device != "cpu" and not caps.cuda and not a.tiny:
        print("warning: no CUDA GPU visible; the real shapes will be slow on the CPU", flush=True)
    try:
        for name in a.models:
            check_model(report, a, name, shared)
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report["total_s"] = round(time.perf_counter() - report["_t0"], 1)
    report["ok"] = all(s["status"] != "failed" for s in report["stages"])
    save(report, a.out)
    print(f"wrote {a.out} in {report['total_s']} s: {'ok' if report['ok'] else 'FAILED stages'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
