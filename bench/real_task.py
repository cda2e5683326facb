"""The baselines ladder on real tasks: CLINC150 (a subset of intents) and the ticket-triage demo.

For each task it runs, through the evaluation harness, on the same items:

* ``prompt``: the base model (SmolLM2-135M-Instruct by default) with a system prompt listing the
  labels, zero-shot, free generation;
* ``fewshot``: plus the k most similar train examples as earlier turns;
* ``rag``: plus the top-k train examples retrieved by hybrid FAISS + BM25, cited in the prompt;
* ``prompt+constrained``: the zero-shot prompt, with the answer chosen among the allowed labels by
  log-likelihood;
* ``knn``: the embedding-kNN classifier (all-MiniLM-L6-v2, similarity-weighted vote of 10
  neighbours), the RAG rung's reference: no LLM at all.

The LLM candidates run on a small sample (they cost seconds per item on 2 CPU cores); kNN is also
scored on every test item of the subset. Accuracy comes with a 95% bootstrap CI and macro-F1 from
``tunewise.eval.stats``. Prints a Markdown table (and writes it with ``--out``).

    python bench/real_task.py                      # ~10 min on 2 idle cores
    python bench/real_task.py --items-per-intent 1 --demo-items 20   # quicker
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from tunewise.eval.results import MetricEstimate

REPO = Path(__file__).resolve().parent.parent
CLINC = REPO.parent / "shared" / "datasets" / "clinc150" / "data_full.json"
DEMO = REPO / "examples" / "ticket-triage" / "project.yaml"
CANDIDATES = ["prompt", "fewshot", "rag", "knn", "prompt+constrained"]


def _row(user: str, answer: str) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def clinc_project(
    work: Path, *, n_intents: int, items_per_intent: int, seed: int
) -> tuple[Path, int]:
    """A project over ``n_intents`` CLINC150 intents: train = their full train split, evaluation
    items = a seeded sample of their test split. Returns (project.yaml, number of test items)."""
    data = json.loads(CLINC.read_text())
    rng = random.Random(seed)
    intents = sorted(rng.sample(sorted({i for _, i in data["train"]}), n_intents))
    chosen = set(intents)
    train = [_row(t, i) for t, i in data["train"] if i in chosen]
    test_all = [(t, i) for t, i in data["test"] if i in chosen]
    by_intent: dict[str, list[str]] = {}
    for t, i in test_all:
        by_intent.setdefault(i, []).append(t)
    sample = [_row(t, i) for i in intents for t in rng.sample(by_intent[i], items_per_intent)]
    rng.shuffle(sample)
    root = work / "clinc"
    splits = root / ".tunewise" / "splits"
    _write_jsonl(root / "train.jsonl", train)
    _write_jsonl(splits / "train.jsonl", train)
    _write_jsonl(splits / "val.jsonl", sample)
    _write_jsonl(root / "all_test.jsonl", [_row(t, i) for t, i in test_all])
    cfg = {
        "name": f"clinc{n_intents}",
        "data": {"train": "train.jsonl"},
        "task": {
            "type": "labels",
            "labels": {"intent": intents},
            "system_prompt": "You classify requests to a voice assistant. Reply with exactly one "
            "intent name "
            "from this list and nothing else: " + ", ".join(intents) + ".",
        },
        "eval": {
            "candidates": CANDIDATES,
            "graders": ["format", "label", "exact"],
            "fewshot": {"k": 4, "selection": "similar"},
            "rag": {"k": 4, "sources": ["train"], "hybrid": True},
            "max_new_tokens": 12,
        },
    }
    (root / "project.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root / "project.yaml", len(test_all)


def demo_project(work: Path) -> Path | None:
    """A copy of the ticket-triage demo (its data generated when missing), or None if absent."""
    if not DEMO.is_file():
        return None
    src = DEMO.parent
    dst = work / "ticket-triage"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".tunewise", "__pycache__"))
    raw = yaml.safe_load((dst / "project.yaml").read_text())
    if not (dst / raw["data"]["train"]).is_file() and (dst / "generate.py").is_file():
        subprocess.run([sys.executable, str(dst / "generate.py")], cwd=dst, check=True)
    raw.setdefault("eval", {})
    raw["eval"]["candidates"] = CANDIDATES
    raw["eval"]["external"] = []
    raw["eval"]["graders"] = [
        g for g in raw["eval"].get("graders", ["format", "label", "exact"]) if g != "judge"
    ]
    raw["eval"].setdefault("rag", {})["sources"] = [
        "train"
    ]  # the ladder rung under test: kNN-style RAG
    (dst / "project.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return dst / "project.yaml"


def _fmt(est: MetricEstimate) -> str:
    return f"{est.value:.3f} [{est.ci_low:.2f}, {est.ci_high:.2f}]"


def run_task(
    title: str, project: Path, engine: Any, *, limit: int | None, extra_knn: Path | None
) -> dict:
    from tunewise.config import load_project
    from tunewise.eval.harness import evaluate
    from tunewise.eval.stats import compare

    cfg = load_project(project)
    t0 = time.perf_counter()
    run = evaluate(
        cfg,
        candidates=CANDIDATES,
        engine=engine,
        progress=True,
        limit=limit,
        out_dir=project.parent / "eval",
    )
    comp = compare(run, baselines=["prompt"], n_boot=1000)
    rows = {}
    for c in run.candidates:
        m = comp.metrics[c.name]
        rows[c.name] = {
            "accuracy": _fmt(m["accuracy"]),
            "macro_f1": f"{m['macro_f1'].value:.3f}" if "macro_f1" in m else "-",
            "format": f"{m['format_compliance'].value:.3f}" if "format_compliance" in m else "-",
            "s_per_item": c.meta.get("seconds", 0.0) / max(1, len(c.items)),
            "n": len(c.items),
        }
    out = {
        "title": title,
        "n": len(run.item_ids),
        "rows": rows,
        "seconds": time.perf_counter() - t0,
        "notes": run.meta.get("notes", []),
    }
    if extra_knn is not None:
        from tunewise.baselines.rag import KnnClassifier
        from tunewise.data.labels import LabelSpec
        from tunewise.data.schema import load_examples

        train = load_examples(cfg.work_dir / "splits" / "train.jsonl")
        items = load_examples(extra_knn)
        spec = LabelSpec.from_config(cfg, train)
        knn = KnnClassifier(train, k=10, label_of=lambda t: spec.key(spec.extract(t)))
        preds = knn.predict(items)
        acc = sum(
            spec.key(spec.extract(p)) == spec.key(spec.extract(i.target))
            for p, i in zip(preds, items, strict=True)
        )
        out["knn_all"] = (acc / len(items), len(items))
    return out


def markdown(results: list[dict], model: str) -> str:
    lines = [
        f"Base model: `{model}`; embeddings: all-MiniLM-L6-v2. Accuracy with a 95% bootstrap CI.",
        "",
    ]
    for res in results:
        lines += [
            f"**{res['title']}** ({res['n']} items, {res['seconds']:.0f} s)",
            "",
            "| candidate | accuracy [95% CI] | macro-F1 | format compliance | s/item |",
            "|---|---|---|---|---|",
        ]
        for name, r in res["rows"].items():
            label = "knn (reference, no LLM)" if name == "knn" else name
            lines.append(
                f"| {label} | {r['accuracy']} | {r['macro_f1']} | {r['format']} | "
                f"{r['s_per_item']:.2f} |"
            )
        if "knn_all" in res:
            acc, n = res["knn_all"]
            lines.append(f"| knn on all {n} test items of the subset | {acc:.3f} | | | |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--intents", type=int, default=20, help="CLINC150 intents in the subset (>= 20 advised)"
    )
    ap.add_argument(
        "--items-per-intent",
        type=int,
        default=2,
        help="CLINC test items per intent for the LLM rungs",
    )
    ap.add_argument(
        "--demo-items", type=int, default=40, help="validation items of the demo for the LLM rungs"
    )
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--out", type=Path, help="also write the Markdown table here")
    ap.add_argument(
        "--keep", type=Path, help="keep the projects and their eval.json files in this folder"
    )
    args = ap.parse_args()

    from tunewise.runtime import models
    from tunewise.runtime.cache import GenCache
    from tunewise.runtime.engine import Engine

    t0 = time.perf_counter()
    engine = Engine(models.resolve(args.model), batch_size=16, cache=GenCache())
    results = []
    with tempfile.TemporaryDirectory(prefix="tw-real-task-") as tmp:
        work = Path(tmp)
        if args.keep:
            shutil.rmtree(args.keep, ignore_errors=True)
            work = args.keep
        if CLINC.is_file():
            proj, _ = clinc_project(
                work, n_intents=args.intents, items_per_intent=args.items_per_intent, seed=args.seed
            )
            results.append(
                run_task(
                    f"CLINC150, {args.intents} intents",
                    proj,
                    engine,
                    limit=None,
                    extra_knn=proj.parent / "all_test.jsonl",
                )
            )
        else:
            print(f"CLINC150 not found at {CLINC}: skipped", file=sys.stderr)
        demo = None if args.skip_demo else demo_project(work)
        if demo is not None:
            results.append(
                run_task("ticket-triage demo", demo, engine, limit=args.demo_items, extra_knn=None)
            )
        elif not args.skip_demo:
            print(f"demo project not found at {DEMO}: skipped", file=sys.stderr)
    table = markdown(results, args.model)
    print(table)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
