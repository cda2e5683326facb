"""RAFT on CLINC150: plain LoRA vs context-trained LoRA vs few-shot vs kNN, at equal epochs.

The walk-through's 20 confusable banking / credit-card intents (docs/walkthrough-clinc.md), its
system prompt, and the tunewise ladder itself: ``train.variants: [none, fewshot]`` trains plain
LoRA (``finetuned``) and LoRA on prompts that carry the few-shot rung's retrieved examples
(``finetuned+fewshot``) for the same number of epochs, and evaluates both with the few-shot rung
and the kNN reference on the same validation items. Data: CLINC150's own ``train`` rows for
training (``--per-intent`` per intent), its ``val`` rows for validation (``--val-per-intent``);
its ``test`` rows are given as the sealed test file and never evaluated here.

Printed: each candidate's accuracy with its 95% interval, the paired tests of the context-trained
run against kNN, few-shot and plain LoRA, the training cost of the longer prompts (wall time,
tokens through the model, tokens per example, shared-prefix savings, from each run's run.json),
and the CPU's flags. The gate is held to few-shot and kNN.

Usage:
    .venv/bin/python bench/raft_clinc.py                      # the measurement (hours on 2 cores)
    .venv/bin/python bench/raft_clinc.py --epochs 2 --json-out raft.json
    .venv/bin/python bench/raft_clinc.py --smoke              # wiring check: tiny model, 40 rows
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _trainbench as tb

# docs/walkthrough-clinc.md, step 1: the 20 intents of banking and credit_cards that sound alike.
INTENTS = [
    *("balance", "bill_balance", "bill_due", "pay_bill", "min_payment", "transfer"),
    *("freeze_account", "account_blocked", "report_fraud", "transactions", "credit_limit"),
    *("credit_limit_change", "report_lost_card", "damaged_card", "replacement_card_duration"),
    *("new_card", "card_declined", "apr", "rewards_balance", "redeem_rewards"),
]
SYSTEM = (
    "Classify the customer's banking or credit card request. Reply with exactly one intent name:\n"
    + ", ".join(INTENTS)
)


def rows(split: str, per_intent: int, seed: int) -> list[dict[str, Any]]:
    """CLINC150 ``split`` rows for the 20 intents as chat records, with the walk-through's
    system prompt."""
    out = []
    for r in tb.clinc_chat(tb.CLINC, split, INTENTS, per_intent=per_intent, seed=seed):
        msgs = r["messages"]
        msgs[0] = {"role": "system", "content": SYSTEM}
        out.append({"messages": msgs})
    return out


def tiny_model(out: Path, tokenizer_from: Path) -> Path:
    """A 2-layer random Llama with the real tokenizer (tests/_tiny_model.py): --smoke."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from _tiny_model import build_tiny_llama

    return build_tiny_llama(out, tokenizer_from, max_positions=2048)


def project(work: Path, model: str, a: argparse.Namespace) -> Path:
    """project.yaml for the comparison, with its data files."""
    import yaml

    data = work / "data"
    n_train = 0
    for split, per in (("train", a.per_intent), ("val", a.val_per_intent), ("test", 1)):
        rs = rows(split, per, a.seed)
        n_train = len(rs) if split == "train" else n_train
        tb.write_jsonl(data / f"{split}.jsonl", rs)
    variants = ["none", "fewshot"] + (["rag"] if a.with_rag else [])
    steps_per_epoch = max(1, n_train // a.batch)
    cfg = {
        "name": "raft-clinc",
        "task": {"type": "labels", "system_prompt": SYSTEM},
        "data": {
            "train": "data/train.jsonl",
            "val": "data/val.jsonl",
            "test": "data/test.jsonl",
            "max_len": 768,
        },
        "model": {"base": model},
        "train": {
            "method": "lora",
            "epochs": a.epochs,
            "batch_size": a.batch,
            "seed": a.seed,
            "variants": variants,
            "context_distractor_share": a.distractors,
            "eval_every": steps_per_epoch,  # validation loss once per epoch: equal for both
            "save_every": steps_per_epoch,
            "overfit_sample": 0,
            **({"max_steps": a.max_steps} if a.max_steps else {}),
        },
        "eval": {
            "candidates": ["fewshot", "knn", *(["rag"] if a.with_rag else []), "finetuned"],
            "fewshot": {"k": a.k, "selection": "similar"},
            "rag": {"k": a.k, "sources": ["train"]},
            "constrained": False,
            "classical": a.classical,
            **({"limit": a.limit} if a.limit else {}),
        },
        "gate": {"baselines": ["fewshot", "knn"]},
    }
    path = work / "project.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def training_cost(work: Path) -> dict[str, dict[str, Any]]:
    """Per training stage: steps, wall time, tokens through the model, shared-prefix savings."""
    ladder = json.loads((work / ".tunewise" / "ladder.json").read_text())
    out = {}
    for stage, rec in ladder.items():
        if not stage.startswith("train-"):
            continue
        run = json.loads(Path(rec["outputs"]["run"]).read_text())
        prefix = run.get("shared_prefix") or {}
        out[stage] = {
            "steps": run.get("global_step"),
            "wall_s": run.get("wall_time_s"),
            "tokens_seen": run.get("tokens_trained"),
            "tokens_per_epoch": run.get("train_tokens_per_epoch"),
            "examples": (run.get("examples") or {}).get("train"),
            "tokens_per_s": run.get("tokens_per_s"),
            "shared_prefix": prefix.get("reason"),
            "tokens_not_recomputed": prefix.get("tokens_not_recomputed"),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-intent", type=int, default=50, help="train rows per intent (50)")
    p.add_argument("--val-per-intent", type=int, default=10, help="val rows per intent (10)")
    p.add_argument("--epochs", type=float, default=2.0, help="the same for both fine-tunes (2)")
    p.add_argument("--max-steps", type=int, default=None, help="cap both runs (overrides epochs)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--k", type=int, default=4, help="retrieved examples per prompt (4)")
    p.add_argument("--distractors", type=float, default=0.0, help="context_distractor_share")
    p.add_argument("--with-rag", action="store_true", help="also the rag rung and finetuned+rag")
    p.add_argument("--classical", action="store_true", help="also tfidf and probe")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N val items")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="base model (default: the embedded SmolLM2)")
    p.add_argument("--work", default=None, help="keep the project here (default: a temp dir)")
    p.add_argument("--json-out", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny random model, 2+1 rows per intent")
    a = p.parse_args(argv)
    if a.smoke:
        a.per_intent, a.val_per_intent, a.max_steps, a.epochs = 2, 1, 2, 1.0

    from rich.console import Console
    from rich.table import Table

    from tunewise import paths
    from tunewise.config import load_project
    from tunewise.eval.results import Comparison
    from tunewise.ladder.workflow import run_ladder
    from tunewise.runtime import models

    con = Console()
    if not tb.CLINC.is_file():
        con.print(f"CLINC150 not found at {tb.CLINC}")
        return 2
    cpu = tb.cpu_report()
    with tempfile.TemporaryDirectory(prefix="tw-raft-") as tmp:
        work = Path(a.work or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        embedded = models.resolve(models.DEFAULT_MODEL).path
        model = str(tiny_model(work / "tiny", embedded) if a.smoke else (a.model or embedded))
        # The bench's registry and caches stay in its work folder; converted models are shared.
        os.environ.setdefault("TUNEWISE_MODELS", str(paths.models_dir()))
        os.environ["TUNEWISE_HOME"] = str(work / "home")
        cfg = load_project(project(work, model, a))
        t0 = time.perf_counter()
        run_ladder(cfg, methods=["lora"], console=con)
        ladder_s = time.perf_counter() - t0
        comp = Comparison.load(cfg.work_dir / "eval" / "comparison.json")
        cost = training_cost(work)

    pm = comp.primary_metric
    table = Table(title=f"CLINC150, {len(INTENTS)} confusable intents: {pm} on validation")
    for col in ("candidate", pm, "95% CI"):
        table.add_column(col, justify="left" if col == "candidate" else "right")
    scores = {}
    for name, per in comp.metrics.items():
        s = per.get(pm)
        if s is None:
            continue
        scores[name] = {"value": s.value, "ci": [s.ci_low, s.ci_high]}
        table.add_row(name, f"{s.value:.3f}", f"[{s.ci_low:.3f}, {s.ci_high:.3f}]")
    con.print(table)
    pairs = []
    for pt in comp.pairs:
        if pt.metric == pm and pt.candidate.startswith("finetuned+"):
            pairs.append(
                {"pair": f"{pt.candidate} vs {pt.baseline}", "diff": pt.diff, "p": pt.p_value}
            )
            con.print(f"{pt.candidate} vs {pt.baseline}: {pt.diff:+.3f} (p={pt.p_value:.2g})")
    plain = cost.get("train-lora", {})
    for stage, c in cost.items():
        ratio = ""
        if stage != "train-lora" and plain.get("wall_s") and c.get("wall_s"):
            ratio = (
                f" = {c['wall_s'] / plain['wall_s']:.2f}x the plain run's time, "
                f"{(c['tokens_seen'] or 0) / max(1, plain.get('tokens_seen') or 1):.2f}x its tokens"
            )
        con.print(
            f"{stage}: {c['steps']} steps, {c['wall_s']} s, {c['tokens_seen']} tokens trained "
            f"({c['tokens_per_epoch']} per epoch, "
            f"{(c['tokens_per_epoch'] or 0) / max(1, c['examples'] or 1):.0f} per example) "
            f"({c['tokens_per_s']} tokens/s){ratio}; shared prefix: {c['shared_prefix']}"
        )
    con.print(f"ladder {ladder_s:.0f} s in all")
    con.print(tb.cpu_line(cpu))
    if a.json_out:
        Path(a.json_out).write_text(
            json.dumps(
                {
                    "args": vars(a),
                    "intents": INTENTS,
                    "scores": scores,
                    "pairs": pairs,
                    "training": cost,
                    "ladder_s": ladder_s,
                    "cpu": cpu,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
