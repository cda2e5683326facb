"""Training throughput: the seed recipe vs TRL SFTTrainer vs tunewise LoRA, same work.

LoRA runs (r=16, alpha=32, dropout 0.05, all linear projections; lr 2e-4, cosine with 5%
warmup; same seed) of the embedded SmolLM2-135M on the same examples for the same number of
optimizer steps (steps x batch = the training set: one epoch, so every run sees every example
exactly once):

  (a) seed recipe (the article's): plain ``transformers.Trainer``, each conversation rendered
      with the chat template, tokenized and padded to max_length=512, labels = input ids;
  (b) trl:     TRL ``SFTTrainer`` with its defaults (LoRA through ``peft_config``);
  (c) tunewise with ``train.shared_prefix: off``: today's path before shared prefixes
      (assistant-only labels, dynamic padding, length-grouped batches, labelled-positions loss);
  (s) tunewise as shipped: (c) plus ``train.shared_prefix: auto``, the prefix every row of a
      batch shares (the system prompt) run once per batch, rows batched by prefix and length.

Ratios are reported two ways: trained tokens/s, and **at equal validation loss**: every run
records validation loss every ``--curve-every`` steps against its training seconds (evaluation
time excluded), and ``X/Y at equal val loss`` = seconds Y needs / seconds X needs to reach the
worse of their two final validation losses (linear between points). Runs that optimise another
loss (the seed recipe trains on every token) are then compared at the quality they reach.

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
    "a": "seed recipe (Trainer, pad 512)",
    "b": "TRL SFTTrainer defaults (fp32 where bf16 is emulated)",
    "c": "tunewise, shared_prefix=off (today's path)",
    "s": "tunewise, shared prefix (default)",
    "d": "tunewise, train.precision=bf16",
    "e": "tunewise, logits at every position (ablation)",
}
LORA = dict(
    r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
)
TARGETS = {"c/a": 2.0, "c/b": 1.3, "s/c": 1.8, "s/b": 2.0, "val_loss_rel": 0.05}
# The ratios the shared-prefix issue asks for, at equal validation loss: (new, reference, name)
EQUAL_LOSS = [
    ("s", "c", "today's tunewise path"),
    ("s", "b", "TRL SFTTrainer"),
    ("s", "a", "seed recipe"),
]


# --- one run, in its own process ------------------------------------------------------------


def _time_trainer_train(curve: Any) -> dict[str, float]:
    """Wrap ``transformers.Trainer.train`` so every trainer's loop is timed the same way, with
    the validation curve's evaluations (``curve.paused``) taken out of the time."""
    from transformers import Trainer

    timing: dict[str, float] = {}
    original = Trainer.train

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        if "depth" in timing:  # a subclass calling super().train(): time the outermost call only
            return original(self, *args, **kwargs)
        timing["depth"] = 1
        self.add_callback(curve)
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            timing["train_loop_s"] = time.perf_counter() - t0 - curve.paused
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

    extra: dict[str, Any] = {} if torch.cuda.is_available() else {"use_cpu": True}
    if not torch.cuda.is_available() and torch.backends.cpu.get_cpu_capability() in (
        "DEFAULT",
        "NO AVX",
        "AVX2",
    ):
        # Without AVX512-BF16/AMX, bf16 autocast is emulated and slower than fp32: the reference
        # is held at its fastest setting on the machine at hand, so TRL runs fp32 there.
        extra["bf16"] = False
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


def run_tunewise_plain(a: argparse.Namespace, rows: list[dict], out: Path) -> Any:
    """tunewise with ``train.shared_prefix: off``: the path before shared prefixes."""
    return run_tunewise(a, rows, out, shared_prefix="off")


def run_tunewise_bf16(a: argparse.Namespace, rows: list[dict], out: Path) -> Any:
    """tunewise with ``train.precision=bf16`` (opt-in on a CPU; meaningful with avx512_bf16/AMX)."""
    return run_tunewise(a, rows, out, precision="bf16")


def run_tunewise_dense(a: argparse.Namespace, rows: list[dict], out: Path) -> Any:
    """Ablation: tunewise with the stock loss, logits at every position (what it did before)."""
    import tunewise.train.trainer as engine

    original = engine.supports_sparse_logits
    engine.supports_sparse_logits = lambda model: False
    try:
        return run_tunewise(a, rows, out, shared_prefix="off")
    finally:
        engine.supports_sparse_logits = original


RUNNERS = {
    "a": run_article,
    "b": run_trl,
    "c": run_tunewise_plain,
    "s": run_tunewise,
    "d": run_tunewise_bf16,
    "e": run_tunewise_dense,
}


def worker(a: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(a.seed)
    if a.threads:
        torch.set_num_threads(a.threads)
    from transformers import AutoTokenizer

    rows = tb.read_jsonl(Path(a.train))
    val = tb.read_jsonl(Path(a.val))
    curve = tb.val_curve(AutoTokenizer.from_pretrained(a.model), val, a.curve_every)
    timing = _time_trainer_train(curve)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix=f"tw-bench-{a.run}-") as tmp:
        t0 = time.perf_counter()
        model, tok = RUNNERS[a.run](a, rows, Path(tmp))
        end_to_end = time.perf_counter() - t0 - curve.paused
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
        "curve": curve.points,  # (training seconds, step, val loss)
    }
    record = getattr(model, "tw_record", None)
    if record is not None:
        result["shared_prefix"] = record.get("shared_prefix")
    Path(a.result).write_text(json.dumps(result))


# --- the comparison --------------------------------------------------------------------------


def prepare(name: str, a: argparse.Namespace, out: Path) -> tuple[Path, Path, list[dict]] | None:
    """Train/val JSONL for one dataset (``steps * batch`` training rows, ``val`` validation
    rows) and the whole training pool (for the batching figures)."""
    n_train = a.steps * a.batch
    if name == "demo":
        if not tb.DEMO.is_file():
            print(f"[skip] demo data not found at {tb.DEMO}")
            return None
        import random

        rows = tb.read_jsonl(tb.DEMO)
        random.Random(a.seed).shuffle(rows)
        val, train = rows[: a.val], rows[a.val :]
    else:
        if not tb.CLINC.is_file():
            print(f"[skip] CLINC150 not found at {tb.CLINC}")
            return None
        intents = tb.clinc_intents(tb.CLINC, a.n_intents, a.seed)
        train = tb.clinc_chat(tb.CLINC, "train", intents, seed=a.seed)
        val = tb.clinc_chat(tb.CLINC, "val", intents, seed=a.seed)[: a.val]
    if len(train) < n_train:
        print(
            f"[warn] {name}: only {len(train)} training rows for {a.steps} steps x batch {a.batch}"
        )
    train_path = tb.write_jsonl(out / name / "train.jsonl", train[:n_train])
    return train_path, tb.write_jsonl(out / name / "val.jsonl", val), train


def compare(a: argparse.Namespace) -> int:
    from rich.console import Console
    from transformers import AutoTokenizer

    from tunewise.runtime import models

    console = Console(width=max(Console().width, 110))  # a log file gets the whole table
    a.model = a.model or str(models.resolve(models.DEFAULT_MODEL).path)
    tok = AutoTokenizer.from_pretrained(a.model)
    cpu = tb.cpu_report()
    if a.threads:
        cpu["torch_threads"] = a.threads  # what every run sets (--threads)
    console.print(tb.cpu_line(cpu))
    report: dict[str, Any] = {
        "args": {k: v for k, v in vars(a).items() if k != "cmd"},
        "cpu": cpu,
        "datasets": {},
    }
    status = 0
    with tempfile.TemporaryDirectory(prefix="tw-bench-") as tmp:
        for name in a.datasets.split(","):
            files = prepare(name, a, Path(tmp))
            if files is None:
                continue
            train_path, val_path, all_train = files
            rows = tb.read_jsonl(train_path)
            tokens = sum(tb.template_tokens(tok, r["messages"]) for r in rows)
            padding = batching_costs(tok, all_train, a.batch, a.seed)
            _print_padding(console, name, len(all_train), a.batch, padding)
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
                    "--curve-every",
                    str(a.curve_every),
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
            report["datasets"][name] = {
                "n_train": len(rows),
                "tokens": tokens,
                "batching": padding,
                "results": results,
            }
            _print_dataset(console, name, len(rows), tokens, results, a)
            report["datasets"][name]["ratios"] = _ratios(results)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(report, indent=2))
    return status


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Throughput ratios ``x/y`` (trained tokens/s), validation-loss gaps ``val_loss_x_vs_y``,
    and ``x/y@loss``: how much sooner x reaches the validation loss both runs reach."""
    out: dict[str, float] = {}
    pairs = [("c", "a"), ("c", "b"), ("d", "b"), ("c", "e"), ("s", "c"), ("s", "b"), ("s", "a")]
    for new, ref in pairs:
        x, y = results.get(new), results.get(ref)
        if not x or not y:
            continue
        out[f"{new}/{ref}"] = x["tokens_per_s"] / y["tokens_per_s"]
        if (new, ref) in (("c", "a"), ("c", "b"), ("s", "c")):
            out[f"val_loss_{new}_vs_{ref}"] = x["val_loss"] / y["val_loss"] - 1
        if new == "s" and x.get("curve") and y.get("curve"):
            found = tb.speedup_at_equal_loss(y["curve"], x["curve"])
            if found is not None:
                out[f"{new}/{ref}@loss"], out[f"{new}/{ref}@loss_target"] = found
    return out


def _print_ratio(console: Any, key: str, value: float, ratios: dict[str, float]) -> None:
    if key.endswith("@loss_target"):
        return
    names = {"a": "the seed recipe", "b": "TRL SFTTrainer", "c": "today's path", "e": "(e)"}
    if key.startswith("val_loss_"):
        ok = "[green]meets[/]" if value <= TARGETS["val_loss_rel"] else "[red]misses[/]"
        label = key.removeprefix("val_loss_")
        console.print(f"  val loss {label}: {value:+.1%} (target within +5%: {ok})")
        return
    pair = key.removesuffix("@loss")
    target = TARGETS.get(pair)
    verdict = ""
    if target is not None and (key.endswith("@loss") or not pair.startswith("s/")):
        verdict = (
            f" (target >= {target}x: {'[green]meets[/]' if value >= target else '[red]misses[/]'})"
        )
    if key.endswith("@loss"):
        loss = ratios[f"{key}_target"]
        console.print(
            f"  {pair} at equal val loss ({loss:.4f}) = {value:.2f}x vs {names[pair[-1]]}{verdict}"
        )
    elif key == "d/b":
        console.print(f"  d/b = {value:.2f}x (tunewise with train.precision=bf16 vs TRL)")
    elif key == "c/e":
        console.print(f"  c/e = {value:.2f}x (logits only at labelled positions vs everywhere)")
    else:
        console.print(f"  throughput {key} = {value:.2f}x{verdict}")


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
    if "s" in results and results["s"].get("shared_prefix"):
        sp = results["s"]["shared_prefix"]
        console.print(
            f"  (s) shared prefix: {sp['reason']}; {sp['prefix_batches']} batches ran their prefix "
            f"once, {sp['plain_batches']} ran plain, {sp['tokens_not_recomputed']} tokens skipped"
        )
    ratios = _ratios(results)
    for key, value in ratios.items():
        _print_ratio(console, key, value, ratios)


# --- padding: what each way of batching makes the model run --------------------------------------


def batching_costs(tok: Any, rows: list[dict], batch: int, seed: int) -> dict[str, int]:
    """Tokens the model runs over one epoch of ``rows`` in batches of ``batch``, per strategy.

    Plain path: every row padded to its batch's longest. Shared prefix: the batch's common prefix
    once, then every suffix padded to the longest suffix (or, as a bound on what padding-free
    suffixes could save, not padded at all). Orders come from tunewise's own sampler.
    """
    from tunewise.data.schema import Example
    from tunewise.train.collate import LengthGroupedSampler, encode
    from tunewise.train.prefix import MIN_PREFIX_TOKENS, _common_prefix, _prefix_cap, prefix_layout

    items = [encode(tok, Example(messages=r["messages"], line=i)) for i, r in enumerate(rows)]
    lengths = [len(e.input_ids) for e in items]

    def batches(**kw: Any) -> list[list[int]]:
        order = list(LengthGroupedSampler(lengths, batch, seed=seed, **kw))
        return [order[i : i + batch] for i in range(0, len(order), batch)]

    def plain(bs: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)

    def shared(bs: list[list[int]], pad: bool = True) -> int:
        total = 0
        for b in bs:
            p = min(_prefix_cap(items[i]) for i in b)
            for i in b[1:]:
                p = min(p, _common_prefix(items[b[0]].input_ids, items[i].input_ids))
            p = p if len(b) > 1 and p >= MIN_PREFIX_TOKENS else 0
            suffixes = [lengths[i] - p for i in b]
            total += p + (len(b) * max(suffixes) if pad else sum(suffixes))
        return total

    grouped = batches(groups=prefix_layout(items, batch).groups)
    return {
        "tokens (no padding, no sharing)": sum(lengths),
        "plain, random batches": plain(batches(by_length=False)),
        "plain, length-grouped (shared_prefix=off)": plain(batches()),
        "shared prefix, random batches": shared(batches(by_length=False)),
        "shared prefix, batched by prefix and length (default)": shared(grouped),
        "shared prefix, padding-free suffixes (bound)": shared(grouped, pad=False),
    }


def _print_padding(console: Any, name: str, n: int, batch: int, costs: dict[str, int]) -> None:
    from rich.table import Table

    base = costs["tokens (no padding, no sharing)"]
    table = Table(title=f"{name}: tokens the model runs per epoch ({n} examples, batch {batch})")
    table.add_column("batching", justify="left")
    table.add_column("tokens run", justify="right")
    table.add_column("vs unpadded rows", justify="right")
    for what, tokens in costs.items():
        table.add_row(what, f"{tokens:,}", f"{tokens / base:.2f}x")
    console.print(table)


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
        q.add_argument(
            "--curve-every",
            type=int,
            default=2,
            help="validation loss every N steps, for the ratios at equal loss (default 2)",
        )
    w.add_argument("--run", choices=list(RUNS), required=True)
    w.add_argument("--train", required=True)
    w.add_argument("--val", required=True)
    w.add_argument("--result", required=True)
    p.add_argument("--datasets", default="demo,clinc", help="comma list of demo, clinc")
    p.add_argument("--runs", default="a,b,c,s", help="comma list of a, b, c, s, d, e")
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
