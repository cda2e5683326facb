"""DART data-to-text as a tunewise ``text`` task with several human references per input.

Reads ``dart-v1.1.1-full-dev.json`` from ``../shared/datasets/dart`` (MIT; see its README: Nan L. et
al., "DART: Open-Domain Structured Data Record to Text Generation", NAACL 2021) and writes
``data/train.jsonl``, ``data/val.jsonl`` and ``data/test.jsonl`` beside this script. Nothing of the
data set is kept in the repository: run this first.

One line per input: the user turn lists the triples, one ``subject | relation | object`` a line;
the assistant turn is the first human reference, and ``references`` holds the others (the field
tunewise reads as further acceptable answers, see docs/data.md). Training uses each reference as an
example of its own; evaluation scores an answer against all of them.

The splits are made here, by input, so every reference of an input stays in one split (no
reference of a validation input is ever trained on). ``--source e2e`` keeps the restaurant inputs
(E2E's attributes, ~2.9 references each); ``--source all`` keeps every input of the dev set.

Usage::

    python examples/dart-text/prepare.py                       # e2e, 500 / 100 / 100 inputs
    python examples/dart-text/prepare.py --source all --train 1000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "datasets" / "dart" / "dart-v1.1.1-full-dev.json"


def as_example(record: dict) -> dict:
    """One DART input as a chat example with all its references."""
    triples = "\n".join(" | ".join(str(x) for x in t) for t in record["tripleset"])
    texts = [a["text"].strip() for a in record["annotations"] if a["text"].strip()]
    texts = list(dict.fromkeys(texts))  # an annotation given twice is one reference
    row: dict = {
        "messages": [
            {"role": "user", "content": triples},
            {"role": "assistant", "content": texts[0]},
        ]
    }
    if len(texts) > 1:
        row["references"] = texts[1:]
    return row


def select(records: list[dict], source: str) -> list[dict]:
    if source == "all":
        return [r for r in records if r["annotations"]]
    return [r for r in records if r["annotations"] and r["annotations"][0]["source"] == source]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source-file", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--source", default="e2e", help="e2e | webnlg | all (annotation source)")
    ap.add_argument("--train", type=int, default=500, help="training inputs")
    ap.add_argument("--val", type=int, default=100, help="validation inputs")
    ap.add_argument("--test", type=int, default=100, help="sealed test inputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "data")
    args = ap.parse_args(argv)
    if not args.source_file.is_file():
        print(
            f"{args.source_file}: not found; the DART dev set lives in ../shared/datasets/dart "
            "beside the repository (it is not part of it)",
            file=sys.stderr,
        )
        return 2
    records = select(json.loads(args.source_file.read_text(encoding="utf-8")), args.source)
    # One input may appear twice in DART (the same triples, other annotators): merge them so
    # that the same input can never land in two splits.
    merged: dict[str, dict] = {}
    for r in records:
        key = json.dumps(r["tripleset"], sort_keys=True)
        if key in merged:
            merged[key]["annotations"] += r["annotations"]
        else:
            merged[key] = {"tripleset": r["tripleset"], "annotations": list(r["annotations"])}
    inputs = list(merged.values())
    random.Random(args.seed).shuffle(inputs)
    need = args.train + args.val + args.test
    if len(inputs) < need:
        print(f"only {len(inputs)} inputs from {args.source}; asked for {need}", file=sys.stderr)
        return 2
    parts = {
        "val": inputs[: args.val],
        "test": inputs[args.val : args.val + args.test],
        "train": inputs[args.val + args.test : need],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        rows = [as_example(r) for r in part]
        tmp = args.out / f".{name}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
        tmp.replace(args.out / f"{name}.jsonl")  # atomic: a reader never sees half a file
        refs = sum(1 + len(r.get("references", [])) for r in rows)
        print(f"{name}: {len(rows)} inputs, {refs} references -> {args.out / f'{name}.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
