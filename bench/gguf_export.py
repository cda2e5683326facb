"""GGUF export of the demo fine-tune: size per quantization and agreement with the merged model.

1. Unless ``--spec`` names a registry version, train the demo's LoRA (ticket triage on the embedded
   SmolLM2-135M) for ``--steps`` optimizer steps in a scratch ``TUNEWISE_HOME`` and register it.
2. ``export merged`` (the reference) and ``export gguf`` at f16, q8_0 and q4_0.
3. Load each GGUF back through transformers' GGUF loader and compare greedy answers with the merged
   model on the demo's validation prompts (the project's system prompt, its split, seed 0); for
   f16 also the largest logit difference on the first prompt.

It prints one table and, with ``--json``, writes the figures. llama.cpp itself is not run here:
``llama-cpp-python`` ships no wheel for this platform and did not build within 10 minutes on
2 CPU cores, so the check is transformers' reading of the file.

    TUNEWISE_MODELS=/tmp/tw-test-models .venv/bin/python bench/gguf_export.py --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "ticket-triage"


def tunewise(*args: str) -> None:
    """``tunewise ARGS...`` in this process, as a user would type it; stop on failure."""
    import typer.main

    from tunewise.cli import app

    code = typer.main.get_command(app).main(list(args), prog_name="tunewise", standalone_mode=False)
    if code:
        sys.exit(f"tunewise {' '.join(args)} exited {code}")


def train_demo(work: Path, steps: int) -> str:
    """Split the demo data, train its LoRA for ``steps`` steps, register it; the spec."""
    from tunewise.config import load_project

    project = work / "project"
    shutil.copytree(DEMO, project, ignore=shutil.ignore_patterns(".tunewise"))
    splits = project / ".tunewise" / "splits"
    pattern = load_project(project / "project.yaml").task.output_pattern or ""
    data = str(project / "data" / "tickets.jsonl")
    tunewise("data", "split", data, "--out", str(splits), "--pattern", pattern)
    run = work / "run"
    sets = [f"train.max_steps={steps}", "train.eval_every=100000", "train.save_every=100000"]
    sets.append("train.overfit_sample=0")
    args = [a for s in sets for a in ("--set", s)]
    tunewise("train", str(project / "project.yaml"), *args, "--run-dir", str(run), "--no-progress")
    tunewise("registry", "add", str(run), "--name", "ticket-triage")
    return "ticket-triage:1"


def val_conversations(n: int) -> tuple[list[list[dict[str, str]]], list[str]]:
    """The demo's validation prompts (its own split, seed 0) with the project's system prompt."""
    from tunewise.config import load_project
    from tunewise.data.schema import load_examples
    from tunewise.data.split import split_examples

    cfg = load_project(DEMO / "project.yaml")
    parts, _ = split_examples(
        load_examples(cfg.data.train),
        val=cfg.data.split.val,
        test=cfg.data.split.test,
        seed=cfg.data.split.seed,
        output_pattern=cfg.task.output_pattern,
    )
    val = parts["val"][:n]
    convs = [
        [dict(m) for m in ex.with_system(cfg.task.system_prompt).prompt_messages] for ex in val
    ]
    return convs, [ex.target for ex in val]


def demo_arguments(doc: str, *, quants: str, work: Path) -> argparse.ArgumentParser:
    """The options of the benches that export the demo fine-tune (this one, llamacpp_compare)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--spec", help="registry version to export (default: train the demo LoRA)")
    ap.add_argument("--steps", type=int, default=30, help="LoRA steps when training (batch 8)")
    ap.add_argument("--items", type=int, default=70, help="validation prompts (the split has 70)")
    ap.add_argument("--quants", default=quants)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--work", type=Path, default=work)
    ap.add_argument("--json", type=Path, help="write the figures here")
    return ap


def main() -> None:
    ap = demo_arguments(__doc__, quants="f16,q8_0,q4_0", work=Path("/tmp/tw-gguf-bench"))
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.time()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    if args.spec is None:
        os.environ["TUNEWISE_HOME"] = str(args.work / "home")
        spec = train_demo(args.work, args.steps)
    else:
        spec = args.spec
    trained_s = time.time() - started

    from tunewise.export.gguf import export_gguf, greedy_answers, load_gguf
    from tunewise.export.vllm import export_merged

    merged_dir = args.work / "merged"
    export_merged(spec, merged_dir)
    tok = AutoTokenizer.from_pretrained(merged_dir)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    convs, targets = val_conversations(args.items)
    want = greedy_answers(merged, tok, convs, max_new_tokens=args.max_new_tokens)
    first = tok.apply_chat_template(convs[0], add_generation_prompt=True, tokenize=False)
    ids = tok(first, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        ref_logits = merged(ids).logits
    rows = [
        {
            "model": "merged (HF, fp32)",
            "bytes": sum(f.stat().st_size for f in merged_dir.glob("*.safetensors")),
            "agree": len(want),
            "accuracy": sum(a == t for a, t in zip(want, targets, strict=True)) / len(want),
        }
    ]
    for quant in args.quants.split(","):
        t0 = time.time()
        res = export_gguf(spec, args.work / quant / f"ticket-triage-{quant}.gguf", quant=quant)
        export_s = time.time() - t0
        model = load_gguf(res["out"])
        got = greedy_answers(model, tok, convs, max_new_tokens=args.max_new_tokens)
        with torch.no_grad():
            diff = (model(ids).logits - ref_logits).abs().max().item()
        rows.append(
            {
                "model": f"GGUF {quant}",
                "bytes": res["bytes"],
                "tensor_types": res["tensor_types"],
                "agree": sum(a == b for a, b in zip(got, want, strict=True)),
                "accuracy": sum(a == t for a, t in zip(got, targets, strict=True)) / len(got),
                "max_logit_diff_first_prompt": diff,
                "export_s": round(export_s, 1),
                "differing": [[w, g] for w, g in zip(want, got, strict=True) if w != g][:5],
            }
        )
        del model

    n = len(want)
    print(f"\n{spec}: {n} validation prompts, greedy, {args.max_new_tokens} new tokens at most")
    print(f"{'model':<20} {'size MiB':>9} {'same answer':>12} {'accuracy':>9} {'max |dlogit|':>13}")
    for r in rows:
        d = r.get("max_logit_diff_first_prompt")
        print(
            f"{r['model']:<20} {r['bytes'] / 2**20:>9.1f} {r['agree']:>5}/{n:<6} "
            f"{r['accuracy']:>9.3f} {'' if d is None else f'{d:.4f}':>13}"
        )
    print(f"max |logit| on the first prompt: {ref_logits.abs().max().item():.2f}")
    load = os.getloadavg()
    took = time.time() - started
    print(f"wall {took:.0f} s (training/registry {trained_s:.0f} s), load {load[0]:.1f}")
    if args.json:
        args.json.write_text(
            json.dumps({"spec": spec, "n": n, "rows": rows, "wall_s": took, "load": load}, indent=2)
        )


if __name__ == "__main__":
    main()
