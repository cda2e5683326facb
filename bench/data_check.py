"""How does ``tunewise data check`` scale? Times it on generated 10k and 100k example files.

    .venv/bin/python bench/data_check.py [--sizes 10000 100000] [--keep DIR]

The files look like a support-ticket triage set: system prompt, a ticket of 8-60 words drawn
from a few hundred words, answers ``Category: <c>\\nPriority: <p>``, with 1% exact duplicates,
1% near-duplicates (case, punctuation, one word), 0.5% format outliers, 0.5% PII and 5%
multi-turn conversations, so every check has real work to do.

The tokenizer is loaded once before timing (it is a fixed cost, not a per-example one). Targets
from the issue: 100k in under 60 s on 2 cores, and a 100k/10k time ratio of at most 12
(near-linear). Exit code 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

_WORDS_TEXT = """
account access address admin alert app archive attach audit backup balance bank battery bill
billing broken browser bug button cache calendar camera cancel card cart charge chat checkout
click cloud code company computer connect contract copy coupon crash credit customer dashboard
data database date deadline delete delivery desktop device discount display document domain
download driver email error export fail fee file filter firmware folder form freeze gateway
guest hardware header help history home host image import install invoice item key keyboard
label language laptop layout license link list load locked login logout mail manager market
member menu message migrate mobile monitor month network notify number office order page
paid parcel password payment pdf phone plan plugin policy portal price printer privacy profile
project purchase queue quota receipt refund region release remote renew report request reset
restore router save scan schedule screen search secure server service session settings setup
share shipping slow software speed storage store subscription support sync system tablet tax
team template ticket timeout token tracking trial update upgrade upload user vendor version
video wallet warranty website week wifi window workspace yesterday today again still never
always suddenly twice cannot please urgent help quickly thanks hello since after before when
"""
WORDS = _WORDS_TEXT.split()
OPENERS = ["hi", "hello team", "urgent", "quick question", "", "", "", "dear support", "hey"]
CATEGORIES = ["billing", "shipping", "login", "bug", "account", "feature_request", "other"]
PRIORITIES = ["low", "medium", "high"]
SYSTEM = "You triage support tickets. Answer with the category and the priority."


def _ticket(rng: random.Random, i: int) -> str:
    body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 60)))
    opener = rng.choice(OPENERS)
    return (f"{opener}, " if opener else "") + body + f" (order {100000 + i})"


def generate(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    rows: list[list[dict[str, str]]] = []
    for i in range(n):
        text = _ticket(rng, i)
        answer = f"Category: {rng.choice(CATEGORIES)}\nPriority: {rng.choice(PRIORITIES)}"
        r = rng.random()
        if r < 0.01 and rows:
            rows.append(rows[rng.randrange(len(rows))])  # exact duplicate
            continue
        if r < 0.02 and rows:
            prev = rows[rng.randrange(len(rows))]
            words = prev[1]["content"].split()
            words[rng.randrange(len(words))] = rng.choice(WORDS)
            text = " ".join(words).upper() + "!"  # near-duplicate
            answer = prev[-1]["content"]
        elif r < 0.025:
            answer = f"{rng.choice(CATEGORIES)} / {rng.choice(PRIORITIES)}"  # format outlier
        elif r < 0.03:
            text += f" my email is user{i}@example.com and my card is 4111 1111 1111 1111"
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
        if rng.random() < 0.05:
            msgs += [
                {"role": "assistant", "content": "Could you tell me your order number?"},
                {"role": "user", "content": f"it is {200000 + i}"},
            ]
        msgs.append({"role": "assistant", "content": answer})
        rows.append(msgs)
    with open(path, "w", encoding="utf-8") as fh:
        for msgs in rows:
            fh.write(json.dumps({"messages": msgs}) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes", type=int, nargs=2, default=[10_000, 100_000], metavar=("SMALL", "LARGE")
    )
    ap.add_argument("--keep", type=Path, default=None, help="write the generated files here")
    ap.add_argument("--model", default=None, help="tokenizer's model (default: the embedded one)")
    args = ap.parse_args()

    from tunewise.data import checks

    tokenizer, model_name = checks._load_tokenizer(args.model)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="tw-bench-data-"))
    workdir.mkdir(parents=True, exist_ok=True)
    times: dict[int, float] = {}
    for n in args.sizes:
        path = workdir / f"tickets-{n}.jsonl"
        generate(path, n)
        load = os.getloadavg()[0]
        started, cpu0 = time.perf_counter(), time.process_time()
        report = checks.check_file(path, tokenizer=tokenizer)
        times[n] = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        kinds = ", ".join(sorted({w.kind for w in report.warnings}))
        # CPU seconds are what the check costs on a machine of its own (the tokenizer's batch
        # encoder uses both cores, so wall time there is lower still); wall time also counts
        # waiting for cores when other jobs share the machine (load average shown).
        print(
            f"data check {n:>7} examples: {times[n]:6.2f} s wall, {cpu:6.2f} s CPU "
            f"({n / times[n]:,.0f} examples/s; load avg {load:.1f} on {os.cpu_count()} cores; "
            f"{len(report.errors)} errors; warnings: {kinds})"
        )
    small, large = args.sizes
    ratio = times[large] / times[small]
    print(
        f"ratio {large // 1000}k/{small // 1000}k: {ratio:.2f} (size ratio {large / small:g}; "
        "target <= 12)"
    )
    print(f"tokenizer: {model_name}")
    ok = ratio <= 12 and (large < 100_000 or times[large] < 60)
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        print(
            "note: the load average is above the number of cores, so other jobs shared them and "
            "the "
            "wall times include waiting; the CPU seconds are what the check itself used"
        )
    print("PASS" if ok else "FAIL: a target from the issue was missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
