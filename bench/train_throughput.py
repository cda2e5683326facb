"""Training throughput: the article's recipe vs TRL SFTTrainer vs tunewise LoRA, same work.

Three LoRA runs (r=16, alpha=32, dropout 0.05, all linear projections; lr 2e-4, cosine with 5%
warmup; same seed) of the embedded SmolLM2-135M on the same examples for the same number of
optimizer steps (steps x batch = the training set: one epoch, so every run sees every example
exactly once):

  (a) article: plain ``transformers.Trainer``, each conversation rendered with the chat template,
      tokenized and padded to max_length=512, labels = input ids (the article's recipe);
  (b) trl:     TRL ``SFTTrainer`` with its defaults (LoRA through ``peft_config``);
  (c) tunewise: ``tunewise.train.trainer.train`` (assistant-only labels, dynamic padding,
      length-grouped batches).

Trained tokens/s = (tokens of the chat-template rendering of every training example, counted
once with the model's tokenizer: the same number for all three runs) / (wall seconds inside
``Trainer.train``). Padding a run adds is work it does, not tokens it trained. End-to-end time
(loading, tokenizing, training, saving) is reported beside it. Peak RSS is ``ru_maxrss`` of the
run's own process, read right after training. Validation loss is one function for all three:
mean cross-entropy over the final assistant turn of each validation example.

Usage (the figures in docs/bench-train.md come from the default):
    .venv/bin/python bench/train_throughput.py                 # demo data (if present) + CLINC150
    .venv/bin/python bench/train_throughput.py --steps 16 --batch 8 --datasets clinc
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _trainbench as tb

RUNS = {
    "a": "article (Trainer, pad 512)",
    "b": "TRL SFTTrainer defaults",
    "c": "tunewise LoRA",
    "d": "tunewise, train.precision=bf16",
    "e": "tunewise, logits at every position (ablation)",
}
LORA = dict(
    r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
)
TARGETS = {"c/a": 2.0, "c/b": 1.3, "val_loss_rel": 0.05}


# --- one run, in its own process ------------------------------------------------------------


def _time_trainer_train() -> dict[str, float]:
    """Wrap ``transformers.Trainer.train`` so every trainer's loop is timed the same way."""
    from transformers import Trainer

    timing: dict[str, float] = {}
    original = Trainer.train

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        if "depth" in timing:  # a subclass calling super().train(): time the outermost call only
            return original(self, *args, **kwargs)
        timing["depth"] = 1
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            timing["train_loop_s"] = time.perf_counter() - t0
            del timing["depth"]

    Trainer.train = timed  # type: ignore[method-assign]
    return timing


def _training_args(cls: Any, out: Path, a: argparse.Namespace, **extra: Any) -> Any:
    return cls(
        output_dir=str(out),
        per_device_train_batch_size=a.batch,
        max_steps=a.steps,
        learning_rate=a.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        seed=a.seed,
        data_seed=a.seed,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        **extra,
    )


def run_article(a: argparse.Namespace, rows: list[dict], out: Path) -> Any:
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    tok = AutoTokenizer.from_pretrained(a.model)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(a.model), LoraConfig(**LORA))
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    ds = Dataset.from_dict({"text": texts}).map(
        lambda b: tok(b["text"], padding="max_length", max_length=512, truncation=True),
        batched=True,
        remove_columns=["text"],
    )
    ds = ds.map(
        lambda b: {"labels": b["input_ids"]}, batched=True
    )  # the article: labels = input ids
    trainer = Trainer(
        model=model,
        args=_training_args(TrainingArguments, out, a),
        train_dataset=ds,
        data_collator=default_data_collator,
        processing_class=tok,
    )
    trainer.train()
    return trainer.model, tok


def run_trl(a: argparse.Namespace, rows: list[dict], out: Path) -> Any:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(a.model)
    ds = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    # SFTConfig defaults to bf16=True, which refuses to start on a CPU unless use_cpu is set (the
    # fix its error message gives); bf16 autocast and gradient checkpointing stay TRL's defaults.
    import torch

    extra = {} if torch.cuda.is_available() else {"use_cpu": True}
    trainer = SFTTrainer(
        model=a.model,
        args=_training_args(SFTConfig, out, a, **extra),
        train_dataset=ds,
        processing_class=tok,
        peft_config=LoraConfig(**LORA),
    )
    trainer.train()
    return trainer.model, tok


def run_tunewise(a: argparse.Namespace, rows: list[dict], out: Path, **train: Any) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunewise.config import ProjectConfig
    from tunewise.train.trainer import train as tw_train

    train_path = tb.write_jsonl(out / "train.jsonl", rows)
    cfg = ProjectConfig(
        name="bench",
        root=out,
        data={"train": train_path},
        model={"base": a.model},
        train={
            "method": "lora",
            "batch_size": a.batch,
            "max_steps": a.steps,
            "lr": a.lr,
            "seed": a.seed,
            "lora_r": 16,
            "lora_alpha": 32,
            "lora_dropout": 0.05,
            "target_modules": "all-linear",
            "scheduler": "cosine",
            "warmup_ratio": 0.05,
            # no mid-run checkpoints or evals: (a) and (b) do neither within these few steps
            "save_every": 10**6,
            "eval_every": 10**6,
            **train,
        },
    )
    record = tw_train(
        cfg, run_dir=out / "run", train_path=train_path, val_path=None, progress=False
    )
    tok = AutoTokenizer.from_pretrained(out / "run")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(a.model), out / "run")
    model.tw_record = record  # type: ignore[attr-defined]
    return model, tok


def run_tunewise_bf16(a: argparse.Namespace, rows: list[dict], out: Path) -> Any:
    """tunewise with ``train.precision=bf16`` (opt-in on a CPU; meaningful with avx512_bf16/AMX)."""
    return run_tunewise(a, rows, out, precision="bf16")


def run_tunewise_dense(a: argparse.Namespace, rows: list[dict], out: Path) -> Any:
    """Ablation: tunewise with the stock loss, logits at every position (what it did before)."""
    import tunewise.train.trainer as engine

    original = engine.supports_sparse_logits
    engine.supports_sparse_logits = lambda model: False
    try:
        return run_tunewise(a, rows, out)
    finally:
        engine.supports_sparse_logits = original


RUNNERS = {
    "a": run_article,
    "b": run_trl,
    "c": run_tunewise,
    "d": run_tunewise_bf16,
    "e": run_tunewise_dense,
}


def worker(a: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(a.seed)
    if a.threads:
        torch.set_num_threads(a.threads)
    timing = _time_trainer_train()
    rows = tb.read_jsonl(Path(a.train))
    val = tb.read_jsonl(Path(a.val))
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix=f"tw-bench-{a.run}-") as tmp:
        t0 = time.perf_counter()
        model, tok = RUNNERS[a.run](a, rows, Path(tmp))
        end_to_end = time.perf_counter() - t0
        peak = tb.peak_rss_bytes()
        val_loss = tb.answer_loss(model, tok, val)
    result = {
        "run": a.run,
        "train_loop_s": timing.get("train_loop_s"),
        "end_to_end_s": end_to_end,
        "peak_rss_bytes": peak,
        "val_loss": val_loss,
        "load_before": load0,
        "load_after": os.getloadavg()[0],
    }
    Path(a.result).write_text(json.dumps(result))


# --- the comparison --------------------------------------------------------------------------


def prepare(name: str, a: argparse.Namespace, out: Path) -> tuple[Path, Path] | None:
    """Train/val JSONL for one dataset: ``steps * batch`` training rows, ``val`` validation rows."""
    n_train = a.steps * a.batch
    if name == "demo":
        if not tb.DEMO.is_file():
            print(f"[skip] demo data not found at {tb.DEMO}")
            return None
        import random

        rows = tb.read_jsonl(tb.DEMO)
        random.Random(a.seed).shuffle(rows)
        val, train = rows[: a.val], rows[a.val :][:n_train]
    else:
        if not tb.CLINC.is_file():
            print(f"[skip] CLINC150 not found at {tb.CLINC}")
            return None
        intents = tb.clinc_intents(tb.CLINC, a.n_intents, a.seed)
        train = tb.clinc_chat(tb.CLINC, "train", intents, seed=a.seed)[:n_train]
        val = tb.clinc_chat(tb.CLINC, "val", intents, seed=a.seed)[: a.val]
    if len(train) < n_train:
        print(
            f"[warn] {name}: only {len(train)} training rows for {a.steps} steps x batch {a.batch}"
        )
    return tb.write_jsonl(out / name / "train.jsonl", train), tb.write_jsonl(
        out / name / "val.jsonl", val
    )


def compare(a: argparse.Namespace) -> int:
    from rich.console import Console
    from transformers import AutoTokenizer

    from tunewise import models

    console = Console(width=max(Console().width, 110))  # a log file gets the whole table
    a.model = a.model or str(models.resolve(models.DEFAULT_MODEL).path)
    tok = AutoTokenizer.from_pretrained(a.model)
    report: dict[str, Any] = {
        "args": {k: v for k, v in vars(a).items() if k != "cmd"},
        "datasets": {},
    }
    status = 0
    with tempfile.TemporaryDirectory(prefix="tw-bench-") as tmp:
        for name in a.datasets.split(","):
            files = prepare(name, a, Path(tmp))
            if files is None:
                continue
            train_path, val_path = files
            rows = tb.read_jsonl(train_path)
            tokens = sum(tb.template_tokens(tok, r["messages"]) for r in rows)
            results: dict[str, dict[str, Any]] = {}
            for run in a.runs.split(","):
                out = Path(tmp) / name / f"{run}.json"
                cmd = [
                    sys.executable,
                    __file__,
                    "_worker",
                    "--run",
                    run,
                    "--train",
                    str(train_path),
                    "--val",
                    str(val_path),
                    "--result",
                    str(out),
                    "--model",
                    a.model,
                    "--steps",
                    str(a.steps),
                    "--batch",
                    str(a.batch),
                    "--lr",
                    str(a.lr),
                    "--seed",
                    str(a.seed),
                    "--threads",
                    str(a.threads),
                ]
                console.print(f"[dim]{name}: run ({run}) {RUNS[run]} ...[/]")
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0 or not out.is_file():
                    console.print(f"[red]run ({run}) failed[/]\n{proc.stderr[-3000:]}")
                    status = 1
                    continue
                res = json.loads(out.read_text())
                res["tokens"] = tokens
                res["tokens_per_s"] = tokens / res["train_loop_s"]
                results[run] = res
            report["datasets"][name] = {"n_train": len(rows), "tokens": tokens, "results": results}
            _print_dataset(console, name, len(rows), tokens, results, a)
            report["datasets"][name]["ratios"] = _ratios(results)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(report, indent=2))
    return status


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    c = results.get("c")
    for ref in ("a", "b"):
        if c and ref in results:
            out[f"c/{ref}"] = c["tokens_per_s"] / results[ref]["tokens_per_s"]
            out[f"val_loss_c_vs_{ref}"] = c["val_loss"] / results[ref]["val_loss"] - 1
    d = results.get("d")
    if d and "b" in results:
        out["d/b"] = d["tokens_per_s"] / results["b"]["tokens_per_s"]
    e = results.get("e")
    if c and e:
        out["c/e"] = c["tokens_per_s"] / e["tokens_per_s"]
    return out


def _print_dataset(
    console: Any, name: str, n: int, tokens: int, results: dict, a: argparse.Namespace
) -> None:
    from rich.table import Table

    table = Table(
        title=f"{name}: {n} examples, {tokens} trained tokens, {a.steps} steps x batch {a.batch}"
    )
    for col in (
        "run",
        "train loop s",
        "trained tok/s",
        "end-to-end s",
        "peak RSS GiB",
        "val loss",
        "load avg",
    ):
        table.add_column(col, justify="left" if col == "run" else "right")
    for run, r in results.items():
        table.add_row(
            f"({run}) {RUNS[run]}",
            f"{r['train_loop_s']:.1f}",
            f"{r['tokens_per_s']:.0f}",
            f"{r['end_to_end_s']:.1f}",
            f"{r['peak_rss_bytes'] / 2**30:.2f}",
            f"{r['val_loss']:.4f}",
            f"{r['load_before']:.1f}->{r['load_after']:.1f}",
        )
    console.print(table)
    for key, value in _ratios(results).items():
        if key == "d/b":
            console.print(f"  d/b = {value:.2f}x (tunewise with train.precision=bf16 vs TRL)")
        elif key == "c/e":
            console.print(
                f"  c/e = {value:.2f}x (logits only at labelled positions vs at every position)"
            )
        elif key.startswith("c/"):
            target = TARGETS[key]
            ok = "[green]meets[/]" if value >= target else "[red]misses[/]"
            console.print(f"  throughput {key} = {value:.2f}x (target >= {target}x: {ok})")
        else:
            ok = "[green]meets[/]" if value <= TARGETS["val_loss_rel"] else "[red]misses[/]"
            console.print(
                f"  val loss {key.replace('val_loss_', '')}: {value:+.1%} (target within +5%: {ok})"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("_worker")  # internal: one run in a fresh process (its own peak RSS)
    for q in (p, w):
        q.add_argument(
            "--model", default=None, help="model dir (default: the embedded SmolLM2-135M)"
        )
        q.add_argument("--steps", type=int, default=8, help="optimizer steps (default 8)")
        q.add_argument("--batch", type=int, default=4, help="per-step batch (default 4)")
        q.add_argument("--lr", type=float, default=2e-4)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument(
            "--threads", type=int, default=0, help="torch threads per run (default: torch's)"
        )
    w.add_argument("--run", choices=list(RUNS), required=True)
    w.add_argument("--train", required=True)
    w.add_argument("--val", required=True)
    w.add_argument("--result", required=True)
    p.add_argument("--datasets", default="demo,clinc", help="comma list of demo, clinc")
    p.add_argument("--runs", default="a,b,c", help="comma list of a, b, c")
    p.add_argument("--val", type=int, default=64, help="validation examples (default 64)")
    p.add_argument(
        "--n-intents", type=int, default=15, help="CLINC intents in the subset (default 15)"
    )
    p.add_argument("--json-out", default=None, help="also write the figures as JSON here")
    a = p.parse_args(argv)
    if a.cmd == "_worker":
        worker(a)
        return 0
    return compare(a)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
