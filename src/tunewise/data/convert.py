"""Convert common dataset shapes into chat JSONL (``{"messages": [...]}`` per line).

Sources:

* ``csv``: a text column and a label column; the user turn is ``template`` filled with the row's
  columns (``{text}``, or any other column name), the answer is ``answer_template`` (``{label}``).
* ``json-pairs``: ``[text, label]`` pairs, either a top-level list or a mapping of named lists
  (CLINC150's ``{"train": [...], "val": [...], ...}``); ``keys`` picks the lists, ``labels`` an
  optional subset of labels.
* ``alpaca``: ``{"instruction", "input", "output"}`` records (a JSON list or JSONL).
* ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}`` records.

An optional ``system`` prompt is put first in every conversation. Every produced record is
validated with the same rules as ``data check``; if any record is bad nothing is written and the
error names the source ``file:line`` (CSV, JSONL) or the record (``train[12]``) it came from.
"""

from __future__ import annotations

import csv
import difflib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from tunewise.data.schema import Problem, validate_record
from tunewise.errors import DataError, UserError
from tunewise.fsio import atomic_write_jsonl

Source = Literal["csv", "json-pairs", "alpaca", "sharegpt"]
SOURCES: tuple[str, ...] = ("csv", "json-pairs", "alpaca", "sharegpt")

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}

# One produced record: where it came from ("line 12" or "train[12]"), its label (or None) and messages.
Row = tuple[str, str | None, list[dict[str, str]]]


def _fill(template: str, values: dict[str, Any], where: str, path: Path, opt: str) -> str:
    try:
        return template.format_map(values)
    except KeyError as exc:
        cols = ", ".join(sorted(values))
        raise UserError(
            f"{path}: {where}: {opt} uses {{{exc.args[0]}}} but the columns are: {cols}"
        ) from None
    except (ValueError, IndexError) as exc:
        raise UserError(f"{opt} {template!r}: {exc}") from None


def _read_json_or_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """Records of a JSON list or a JSONL file, each with its location."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(str(path), exc.lineno, "(file)", f"not valid JSON: {exc.msg}") from None
        for i, rec in enumerate(data):
            yield f"[{i}]", rec
        return
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield f"line {lineno}", json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(
                str(path), lineno, "(line)", f"not valid JSON: {exc.msg} at column {exc.colno}"
            ) from None


def _csv_rows(
    path: Path, text_col: str, label_col: str, template: str, answer_template: str, delimiter: str
) -> Iterator[Row]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        header = reader.fieldnames or []
        for col, opt in ((text_col, "--text-col"), (label_col, "--label-col")):
            if col not in header:
                raise DataError(
                    str(path), 1, col, f"no such column for {opt} (columns: {', '.join(header)})"
                )
        for row in reader:
            where = f"line {reader.line_num}"
            values = {k: (v or "").strip() for k, v in row.items() if k is not None}
            values["text"] = values.get(text_col, "")
            values["label"] = values.get(label_col, "")
            yield _templated(values, where, path, template, answer_template)


def _templated(
    values: dict[str, Any], where: str, path: Path, template: str, answer_template: str
) -> Row:
    """One text/label record rendered through the user and answer templates."""
    user = _fill(template, values, where, path, "--template")
    answer = _fill(answer_template, values, where, path, "--answer-template")
    return (
        where,
        values["label"],
        [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
    )


def _pair_rows(
    path: Path, keys: list[str] | None, template: str, answer_template: str
) -> Iterator[Row]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(str(path), exc.lineno, "(file)", f"not valid JSON: {exc.msg}") from None
    if isinstance(data, list):
        if keys:
            raise UserError(f"{path}: --keys given but the file is a plain list of pairs")
        groups = [("", data)]
    elif isinstance(data, dict):
        available = [k for k, v in data.items() if isinstance(v, list)]
        chosen = keys or available
        for k in chosen:
            if k not in available:
                raise UserError(f"{path}: no list named {k!r} (available: {', '.join(available)})")
        groups = [(k, data[k]) for k in chosen]
    else:
        raise DataError(
            str(path),
            None,
            "(file)",
            "expected a list of [text, label] pairs or a mapping of such lists",
        )
    for key, items in groups:
        for i, item in enumerate(items):
            where = f"{key}[{i}]"
            if not (
                isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)
            ):
                raise DataError(
                    str(path),
                    None,
                    where,
                    f"expected a [text, label] pair of strings, got {json.dumps(item)[:80]}",
                )
            values = {"text": item[0].strip(), "label": item[1].strip()}
            yield _templated(values, where, path, template, answer_template)


def _alpaca_rows(path: Path) -> Iterator[Row]:
    for where, rec in _read_json_or_jsonl(path):
        if not isinstance(rec, dict) or "instruction" not in rec or "output" not in rec:
            raise DataError(
                str(path), None, where, "expected an object with 'instruction' and 'output'"
            )
        prompt = str(rec["instruction"]).strip()
        extra = str(rec.get("input") or "").strip()
        if extra:
            prompt = f"{prompt}\n\n{extra}"
        msgs = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": str(rec["output"]).strip()},
        ]
        if rec.get("system"):
            msgs.insert(0, {"role": "system", "content": str(rec["system"]).strip()})
        yield where, None, msgs


def _sharegpt_rows(path: Path) -> Iterator[Row]:
    for where, rec in _read_json_or_jsonl(path):
        turns = rec.get("conversations") if isinstance(rec, dict) else None
        if not isinstance(turns, list):
            raise DataError(
                str(path), None, where, "expected an object with a 'conversations' list"
            )
        msgs = []
        if isinstance(rec.get("system"), str) and rec["system"].strip():
            msgs.append({"role": "system", "content": rec["system"].strip()})
        for j, turn in enumerate(turns):
            who = turn.get("from") if isinstance(turn, dict) else None
            if who not in SHAREGPT_ROLES:
                known = ", ".join(sorted(SHAREGPT_ROLES))
                raise DataError(
                    str(path),
                    None,
                    f"{where}.conversations[{j}].from",
                    f"unknown speaker {who!r} (known: {known})",
                )
            value = turn.get("value")
            msgs.append(
                {
                    "role": SHAREGPT_ROLES[who],
                    "content": value.strip() if isinstance(value, str) else value,
                }
            )
        yield where, None, msgs


def convert(
    src: str | Path,
    out: str | Path,
    *,
    source: Source,
    system: str | None = None,
    text_col: str = "text",
    label_col: str = "label",
    template: str = "{text}",
    answer_template: str = "{label}",
    keys: list[str] | None = None,
    labels: list[str] | None = None,
    per_label: int | None = None,
    delimiter: str = ",",
) -> dict[str, Any]:
    """Convert ``src`` into chat JSONL at ``out`` (atomically); returns counts.

    ``labels`` keeps only examples with those labels (csv and json-pairs); a label that never
    occurs is an error, since it is almost always a typo. ``per_label`` keeps at most that many
    examples of each label, the first ones in file order (a smaller, balanced start for a slow
    machine; deterministic, so a rerun writes the same file).
    """
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise UserError(f"{src}: file not found")
    if source == "csv":
        rows: Iterator[Row] = _csv_rows(
            src, text_col, label_col, template, answer_template, delimiter
        )
    elif source == "json-pairs":
        rows = _pair_rows(src, keys, template, answer_template)
    elif source == "alpaca":
        rows = _alpaca_rows(src)
    elif source == "sharegpt":
        rows = _sharegpt_rows(src)
    else:
        raise UserError(f"--from {source!r}: use one of {', '.join(SOURCES)}")
    for flag, value in (("--labels", labels), ("--per-label", per_label)):
        if value and source not in ("csv", "json-pairs"):
            raise UserError(
                f"{flag} only applies to labelled sources (csv, json-pairs), not {source}"
            )
    if per_label is not None and per_label < 1:
        raise UserError(f"--per-label {per_label}: must be at least 1")

    keep = set(labels or [])
    records: list[dict[str, Any]] = []
    problems: list[Problem] = []
    seen: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    for where, label, msgs in rows:
        if label is not None:
            seen[label] += 1
            if keep and label not in keep:
                continue
            if per_label is not None and kept[label] >= per_label:
                continue
            kept[label] += 1
        if system:
            msgs = [{"role": "system", "content": system}, *msgs]
        rec = {"messages": msgs}
        line = int(where[5:]) if where.startswith("line ") else 0
        for p in validate_record(rec, str(src), line):
            problems.append(p if line else Problem(str(src), 0, f"{where}.{p.field}", p.message))
        records.append(rec)
    missing = sorted(keep - set(seen))
    if missing:
        hints = []
        for m in missing[:5]:
            close = difflib.get_close_matches(m, list(seen), n=1)
            hints.append(f"{m!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise UserError(f"{src}: --labels: not found in the data: {', '.join(hints)}")
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(first.path, first.line or None, first.field, first.message + more)
    if not records:
        raise UserError(
            f"{src}: nothing to write (no records{' with the chosen labels' if keep else ''})"
        )
    atomic_write_jsonl(out, records)
    return {
        "source": str(src),
        "out": str(out),
        "from": source,
        "examples": len(records),
        "labels": dict(sorted(kept.items())) if kept else None,
    }
