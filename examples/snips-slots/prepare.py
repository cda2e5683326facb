"""SNIPS slot filling as a tunewise ``json`` task: one chat example per voice-assistant query.

Reads the seven ``train_<Intent>_full.json`` files of the SNIPS NLU benchmark (CC0; see
``../../../shared/datasets/snips/README.md``) and writes ``data/snips.jsonl``: the user turn is
the query, the assistant turn is ``{"intent": ..., "slots": {"slot_name": "value", ...}}``. A slot
name that occurs twice in one query (a few do) keeps both values, as a list, in query order.

One file is not valid UTF-8 as published: ``train_PlayMusic_full.json`` holds an emoji written as
two UTF-16 surrogates, each encoded on its own (CESU-8), which strict UTF-8 refuses. Nothing is
fixed silently: by default the script stops and names the file, the offset and the choices:

* ``--errors cesu8``: decode the surrogate pair back to the character it stands for;
* ``--errors replace``: U+FFFD for each bad byte (the query keeps a visible scar);
* ``--errors skip``: leave out every query that holds an undecodable byte;
* ``--encoding NAME``: read the files in another encoding altogether.

Usage::

    python examples/snips-slots/prepare.py --per-intent 100 --errors cesu8   # 70 train per intent
    python examples/snips-slots/prepare.py --per-intent 400 --errors cesu8   # the larger size

Queries are sampled per intent with a fixed seed, so a size is reproducible, and a larger size
contains every query of a smaller one (the first N of one shuffled order).
"""

from __future__ import annotations

import argparse
import codecs
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "datasets" / "snips"
INTENTS = (
    "AddToPlaylist",
    "BookRestaurant",
    "GetWeather",
    "PlayMusic",
    "RateBook",
    "SearchCreativeWork",
    "SearchScreeningEvent",
)
SYSTEM_PROMPT = (
    "You are the language understanding of a voice assistant. Read the request and reply with "
    'one line of JSON: {"intent": <one of ' + ", ".join(INTENTS) + '>, "slots": {<slot name>: '
    "<the words of the request that fill it>}}. Copy slot values exactly as they appear."
)
# a UTF-16 surrogate (U+D800..U+DFFF) encoded as three UTF-8 bytes: ED A0..BF xx
_CESU8_SURROGATE = re.compile(rb"\xed[\xa0-\xbf][\x80-\xbf]")
# --errors skip: undecodable bytes become this private-use character, and their queries are dropped
_SKIP = "\ue000"
codecs.register_error("tunewise-skip", lambda exc: (_SKIP, exc.end))


class PrepareError(Exception):
    """A problem with the input files, reported as one line (exit code 2)."""


def read_text(path: Path, encoding: str, errors: str) -> str:
    raw = path.read_bytes()
    if errors == "cesu8":
        # Surrogate pairs written as two 3-byte sequences: decode them with surrogatepass, then let
        # UTF-16 recombine each pair into the character it encodes.
        text = raw.decode(encoding, "surrogatepass")
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    try:
        return raw.decode(encoding, "strict" if errors in ("strict", "skip") else errors)
    except UnicodeDecodeError as exc:
        if errors == "skip":
            return raw.decode(encoding, "tunewise-skip")
        hint = ""
        if _CESU8_SURROGATE.match(raw, exc.start):
            hint = " (a UTF-16 surrogate encoded as UTF-8, i.e. CESU-8: an emoji in two halves)"
        raise PrepareError(
            f"{path}: byte 0x{raw[exc.start]:02x} at offset {exc.start} is not valid {encoding}"
            f"{hint}; choose how to read it: --errors cesu8 (recover the character), "
            "--errors replace (U+FFFD), --errors skip (drop that query) or --encoding NAME"
        ) from None


def load_intent(source: Path, intent: str, encoding: str, errors: str) -> list[dict]:
    path = source / f"train_{intent}_full.json"
    if not path.is_file():
        raise PrepareError(f"{path}: not found (is --source the SNIPS folder?)")
    try:
        data = json.loads(read_text(path, encoding, errors))
    except json.JSONDecodeError as exc:
        raise PrepareError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if intent not in data:
        raise PrepareError(f"{path}: no top-level key {intent!r}")
    return data[intent]


def to_answer(intent: str, pieces: list[dict]) -> tuple[str, str] | None:
    """(query, JSON answer), or None for a query holding an undecodable byte under --errors skip."""
    query = "".join(p["text"] for p in pieces)
    if _SKIP in query:
        return None
    slots: dict[str, str | list[str]] = {}
    for p in pieces:
        if "entity" not in p:
            continue
        name, value = p["entity"], p["text"].strip()
        if name in slots:  # a slot named twice in one query: keep both, in order
            prev = slots[name]
            slots[name] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            slots[name] = value
    answer = json.dumps({"intent": intent, "slots": slots}, ensure_ascii=False)
    return query.strip(), answer


def build(source: Path, per_intent: int, seed: int, encoding: str, errors: str) -> list[dict]:
    rows = []
    for intent in INTENTS:
        queries = [
            a
            for q in load_intent(source, intent, encoding, errors)
            if (a := to_answer(intent, q["data"]))
        ]
        rng = random.Random(f"{seed}:{intent}")
        rng.shuffle(queries)
        if per_intent > len(queries):
            raise PrepareError(
                f"{intent}: {len(queries)} queries, fewer than --per-intent {per_intent}"
            )
        for query, answer in queries[:per_intent]:
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": query},
                        {"role": "assistant", "content": answer},
                    ],
                    "intent": intent,
                }
            )
    random.Random(seed).shuffle(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the SNIPS folder")
    ap.add_argument("--out", type=Path, default=HERE / "data" / "snips.jsonl")
    ap.add_argument("--per-intent", type=int, default=100, help="queries per intent (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--encoding", default="utf-8", help="encoding of the source files")
    ap.add_argument(
        "--errors",
        default="strict",
        choices=["strict", "cesu8", "replace", "skip"],
        help="what to do with bytes the encoding cannot read (default: stop and say where)",
    )
    args = ap.parse_args(argv)
    try:
        rows = build(args.source, args.per_intent, args.seed, args.encoding, args.errors)
    except (PrepareError, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    tmp.replace(args.out)  # atomic: a reader never sees half a file
    print(f"wrote {len(rows)} queries ({args.per_intent} per intent) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
