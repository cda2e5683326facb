"""Examples/s of Engine.generate against a one-at-a-time ``model.generate`` loop, same items.

    .venv/bin/python bench/eval_throughput.py [--n 64] [--batch-size 16] [--data FILE.jsonl]

Items: the last ``--n`` conversations of the demo data (``examples/ticket-triage/data/
tickets.jsonl``) when present, else CLINC150 validation utterances (20 intents) with a system
prompt that lists the intents. ``max_new_tokens`` is derived from the reference answers the way
the harness does it. Both paths run greedy on the same loaded base model (the embedded
SmolLM2-135M-Instruct by default); the script checks that every output is identical token for
token and prints the speed ratio. Exit code 1 when any output differs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunewise.runtime.engine import Engine, GenResult

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "ticket-triage" / "data" / "tickets.jsonl"
CLINC = REPO.parent / "shared" / "datasets" / "clinc150" / "data_full.json"


def demo_items(path: Path, n: int) -> tuple[list[list[dict[str, str]]], list[str], str]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    items, answers = [], []
    for row in rows[-n:]:
        msgs = row["messages"]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        items.append(msgs[:last])
        answers.append(msgs[last]["content"])
    return (
        items,
        answers,
        f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path} (last {len(items)})",
    )


def clinc_items(
    path: Path, n: int, n_intents: int = 20
) -> tuple[list[list[dict[str, str]]], list[str], str]:
    data = json.loads(path.read_text())
    intents = sorted({intent for _, intent in data["train"]})
    chosen = sorted(random.Random(0).sample(intents, n_intents))
    system = (
        "You are an intent classifier for a voice assistant. "
        "Classify the user's request into exactly one "
        "of these intents and answer with the intent name only: " + ", ".join(chosen) + "."
    )
    pool = [(t, i) for t, i in data["val"] if i in set(chosen)]
    random.Random(1).shuffle(pool)
    pool = pool[:n]
    items = [
        [{"role": "system", "content": system}, {"role": "user", "content": t}] for t, _ in pool
    ]
    return items, [i for _, i in pool], f"CLINC150 val, {n_intents} intents ({len(items)} items)"


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--model", default=None, help="model name or directory (default: the embedded SmolLM2)"
    )
    ap.add_argument(
        "--data", type=Path, default=None, help="chat JSONL; default: demo data, else CLINC150"
    )
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument(
        "--clinc", action="store_true", help="use CLINC150 even when the demo data exists"
    )
    return ap.parse_args()


def _items(args: argparse.Namespace):
    """(items, answers, source name), or None when no data set is there."""
    if args.data is not None:
        return demo_items(args.data, args.n)
    if DEMO.is_file() and not args.clinc:
        return demo_items(DEMO, args.n)
    if CLINC.is_file():
        return clinc_items(CLINC, args.n)
    return None


def one_at_a_time(
    engine: Engine, msgs_list: list[list[dict[str, str]]], mnt: int, report: bool = False
) -> list[list[int]]:
    """Generated token ids per prompt, through transformers' own ``generate``: the reference."""
    import torch

    tok, model = engine.tokenizer, engine.model
    out, start = [], time.perf_counter()
    for k, msgs in enumerate(msgs_list):
        if report and k and k % 8 == 0:  # a run cut short still gives a lower bound
            print(f"  one-at-a-time: {k} items in {time.perf_counter() - start:.1f} s", flush=True)
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        enc = tok(text, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            gen = model.generate(
                **enc, do_sample=False, max_new_tokens=mnt, pad_token_id=engine.pad_id
            )
        out.append(gen[0, enc["input_ids"].shape[1] :].tolist())
    return out


def _timed(fn):
    """(result, wall seconds, CPU seconds): on a shared machine the wall clock also measures the
    neighbours, so CPU time is printed next to it."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _mismatches(engine: Engine, batched: list[GenResult], single: list[list[int]]) -> int:
    n = 0
    for i, (res, gen) in enumerate(zip(batched, single, strict=True)):
        want_ids = gen[:-1] if gen and gen[-1] in engine.eos_ids else gen
        want = engine.tokenizer.decode(want_ids, skip_special_tokens=True)
        if res.text != want or res.completion_tokens != len(gen):
            n += 1
            print(f"  item {i} differs:\n    batched {res.text!r}\n    single  {want!r}")
    return n


def main() -> int:
    args = _args()
    import torch

    from tunewise.runtime import models
    from tunewise.runtime.engine import Engine, GenRequest

    found = _items(args)
    if found is None:
        print(f"no data: neither {DEMO} nor {CLINC} exists", file=sys.stderr)
        return 2
    items, answers, source = found
    ref = models.resolve(args.model)
    engine = Engine(ref, batch_size=args.batch_size)  # no cache: both paths do the full work
    mnt = args.max_new_tokens or engine.max_new_tokens_for(answers)
    print(
        f"model {ref.name}  data {source}  max_new_tokens {mnt}  batch {args.batch_size}  "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )
    reqs = [GenRequest(messages=m, max_new_tokens=mnt) for m in items]
    one_at_a_time(engine, items[:1], mnt)  # warm-up both paths (allocator, kernels) untimed
    engine.generate(reqs[:2])
    batched, t_batched, c_batched = _timed(lambda: engine.generate(reqs))
    print(f"Engine.generate done in {t_batched:.1f} s", flush=True)
    single, t_single, c_single = _timed(lambda: one_at_a_time(engine, items, mnt, report=True))

    mismatches = _mismatches(engine, batched, single)
    n = len(items)
    prompt_tokens = sum(r.prompt_tokens for r in batched)
    gen_tokens = sum(r.completion_tokens for r in batched)
    per_item = f"prompt tokens {prompt_tokens / n:.0f}/item  generated {gen_tokens / n:.1f}/item"
    print(f"items {n}  {per_item}")
    for label, wall, cpu in (
        ("one-at-a-time model.generate", t_single, c_single),
        ("Engine.generate (batched)   ", t_batched, c_batched),
    ):
        print(f"{label}: {wall:7.1f} s wall {cpu:7.1f} s cpu  {n / wall:6.2f} examples/s")
    print(f"identical outputs: {n - mismatches}/{n}")
    print(f"speed-up: {t_single / t_batched:.2f}x wall-clock, {c_single / c_batched:.2f}x cpu time")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
