"""Real learning on CLINC150: one tunewise LoRA epoch must beat the base model on validation.

A seeded subset of intents (default 12) is turned into chat JSONL: a system prompt that lists the
intents, the user's utterance, and the intent name as the answer. The embedded SmolLM2-135M is
scored before and after one LoRA epoch (tunewise defaults: r=16, alpha=32, lr 2e-4, cosine) on
CLINC150's own validation split for those intents:

* validation loss: mean cross-entropy over the answer tokens (intent name + end of turn);
* greedy label accuracy: the first line of the greedy answer equals the intent name.

Exit code 0 when the loss went down AND the accuracy went up, 1 otherwise.

Usage (the figures in docs/bench-train.md come from the default):
    .venv/bin/python bench/clinc_learning.py
    .venv/bin/python bench/clinc_learning.py --intents 20 --per-intent 30 --json-out clinc.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _trainbench as tb


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval for a proportion (honest at small n and near 0 or 1)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def score(model: Any, tok: Any, val: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    loss = tb.answer_loss(model, tok, val, batch_size=batch)
    answers = tb.greedy_answers(model, tok, val, max_new_tokens=12, batch_size=batch)
    correct = [tb.label_of(ans) == r["label"] for ans, r in zip(answers, val, strict=True)]
    k = sum(correct)
    return {
        "val_loss": loss,
        "accuracy": k / len(val),
        "correct": k,
        "n": len(val),
        "ci95": wilson(k, len(val)),
        "samples": answers[:5],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--intents", type=int, default=12, help="intents in the subset (default 12)")
    p.add_argument(
        "--per-intent", type=int, default=20, help="training examples per intent (default 20)"
    )
    p.add_argument(
        "--val-per-intent", type=int, default=8, help="validation examples per intent (default 8)"
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="model dir (default: the embedded SmolLM2-135M)")
    p.add_argument("--json-out", default=None)
    a = p.parse_args(argv)

    from peft import PeftModel
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunewise.config import ProjectConfig
    from tunewise.runtime import models
    from tunewise.train.trainer import train

    console = Console()
    if not tb.CLINC.is_file():
        console.print(f"CLINC150 not found at {tb.CLINC}")
        return 2
    model_path = a.model or str(models.resolve(models.DEFAULT_MODEL).path)
    intents = tb.clinc_intents(tb.CLINC, a.intents, a.seed)
    train_rows = tb.clinc_chat(tb.CLINC, "train", intents, per_intent=a.per_intent, seed=a.seed)
    val = tb.clinc_chat(tb.CLINC, "val", intents, per_intent=a.val_per_intent, seed=a.seed)
    console.print(f"intents ({len(intents)}): {', '.join(intents)}")
    console.print(f"train {len(train_rows)} examples, val {len(val)} (CLINC150 val split)")

    tok = AutoTokenizer.from_pretrained(model_path)
    t0 = time.perf_counter()
    base = score(AutoModelForCausalLM.from_pretrained(model_path), tok, val, a.batch)
    base_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="tw-clinc-") as tmp:
        train_path = tb.write_jsonl(Path(tmp) / "train.jsonl", train_rows)
        cfg = ProjectConfig(
            name="clinc",
            root=Path(tmp),
            data={"train": train_path},
            model={"base": model_path},
            train={
                "method": "lora",
                "epochs": 1,
                "batch_size": a.batch,
                "seed": a.seed,
                "save_every": 10**6,
                "eval_every": 10**6,
            },
        )
        t0 = time.perf_counter()
        record = train(
            cfg, run_dir=Path(tmp) / "run", train_path=train_path, val_path=None, progress=True
        )
        train_s = time.perf_counter() - t0
        tuned_model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(model_path), Path(tmp) / "run"
        )
        tuned = score(tuned_model, tok, val, a.batch)

    table = Table(
        title=f"CLINC150, {len(intents)} intents: one LoRA epoch ({record.get('global_step')} "
        "steps)"
    )
    for col in ("model", "val loss", "greedy accuracy", "95% CI"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, s in (("base SmolLM2-135M-Instruct", base), ("+ tunewise LoRA, 1 epoch", tuned)):
        table.add_row(
            name,
            f"{s['val_loss']:.3f}",
            f"{s['accuracy']:.1%} ({s['correct']}/{s['n']})",
            f"{s['ci95'][0]:.1%}-{s['ci95'][1]:.1%}",
        )
    console.print(table)
    console.print(
        f"training {train_s:.0f}s ({record.get('tokens_per_s')} tokens/s per run.json), "
        f"base scoring {base_s:.0f}s, load avg {os.getloadavg()[0]:.1f}"
    )
    console.print(f"base samples: {base['samples']}\ntuned samples: {tuned['samples']}")
    ok = tuned["val_loss"] < base["val_loss"] and tuned["accuracy"] > base["accuracy"]
    console.print("[green]learned[/]: loss down and accuracy up" if ok else "[red]did not learn[/]")
    if a.json_out:
        Path(a.json_out).write_text(
            json.dumps(
                {
                    "args": vars(a),
                    "intents": intents,
                    "base": base,
                    "tuned": tuned,
                    "train_s": train_s,
                    "run": {
                        k: record.get(k)
                        for k in ("global_step", "train_loss", "tokens_per_s", "wall_time_s")
                    },
                },
                indent=2,
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
