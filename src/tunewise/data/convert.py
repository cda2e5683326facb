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
import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from tunewise.data import files
from tunewise.data.files import JSONProblem
from tunewise.data.schema import Problem, validate_record
from tunewise.errors import DataError, UserError
from tunewise.fsio import atomic_write_jsonl, created_parents

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

# One produced record: where it came from ("line 12"
# or "train[12]"), its label (or None) and messages.
Row = tuple[str, str | None, list[dict[str, str]]]


def _fill(template: str, values: dict[str, Any], where: str, path: Path, opt: str) -> str:
    try:
        return template.format_map(values)
    except KeyError as exc:
        cols = ", ".join(sorted(values))
        raise UserError(
            f"{path}: {where}: {opt} uses {{{exc.args[0]}}} but the columns are: {cols}"
        ) from None
    except (ValueError, IndexError, AttributeError, TypeError) as exc:
        raise UserError(f"{opt} {template!r}: {exc}") from None


def _load_json(path: Path, text: str, where: str | None = None, line: int | None = None) -> Any:
    """One JSON document of ``path`` (the whole file, or one JSONL line when ``line`` is set)."""
    try:
        return files.loads(text)
    except JSONProblem as exc:
        at = line if line is not None else exc.line
        field = ".".join(x for x in (where, exc.field) if x).replace(".[", "[")
        raise DataError(str(path), at, field or "(file)", exc.message) from None


def _read_json_or_jsonl(path: Path, encoding: str, errors: str) -> Iterator[tuple[str, Any]]:
    """Records of a JSON list or a JSONL file, each with its location."""
    text = files.read_text(path, encoding, errors)
    if text.lstrip().startswith("["):
        data = _load_json(path, text)
        for i, rec in enumerate(data):
            yield f"[{i}]", rec
        return
    # Split on newlines only: str.splitlines() also breaks at U+2028 and friends, which JSON
    # strings may hold raw.
    for lineno, raw in enumerate(text.split("\n"), start=1):
        if raw.strip():
            yield f"line {lineno}", _load_json(path, raw, line=lineno)


def _csv_reader(text: str, delimiter: str) -> csv.DictReader:
    # The csv module takes a quote or a line break as the delimiter and then reads nonsense.
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise UserError(f"--delimiter {delimiter!r}: must be one character, not a quote or newline")
    return csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)


def _csv_records(path: Path, reader: csv.DictReader) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each row with the line it starts on; a ``csv.Error`` names that line."""
    rows = iter(reader)
    while True:
        start = reader.line_num + 1
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            hint = ""
            if "field larger than field limit" in str(exc):
                hint = " (a field that long usually means a quote left open)"
            raise DataError(str(path), start, "(csv)", f"{exc}{hint}") from None
        yield reader.line_num, row


def _csv_rows(
    path: Path,
    text_col: str,
    label_col: str,
    template: str,
    answer_template: str,
    delimiter: str,
    text: str,
) -> Iterator[Row]:
    reader = _csv_reader(text, delimiter)
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise DataError(str(path), 1, "(csv)", str(exc)) from None
    for col, opt in ((text_col, "--text-col"), (label_col, "--label-col")):
        if col not in header:
            raise DataError(
                str(path), 1, col, f"no such column for {opt} (columns: {', '.join(header)})"
            )
    for line, row in _csv_records(path, reader):
        values = {k: (v or "").strip() for k, v in row.items() if k is not None}
        values["text"] = values.get(text_col, "")
        values["label"] = values.get(label_col, "")
        yield _templated(values, f"line {line}", path, template, answer_template)


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
    path: Path, keys: list[str] | None, template: str, answer_template: str, text: str
) -> Iterator[Row]:
    data = _load_json(path, text)
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


def _alpaca_rows(path: Path, encoding: str, errors: str) -> Iterator[Row]:
    for where, rec in _read_json_or_jsonl(path, encoding, errors):
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


def _sharegpt_rows(path: Path, encoding: str, errors: str) -> Iterator[Row]:
    for where, rec in _read_json_or_jsonl(path, encoding, errors):
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


def _source_rows(
    src: Path,
    source: str,
    opts: dict[str, Any],
    encoding: str,
    errors: str,
) -> Iterator[Row]:
    """The produced records of ``src`` read as ``source``."""
    if source not in SOURCES:
        if source == "snips":  # a folder of files, not records: its own module
            raise UserError("--from snips: use tunewise.data.convert_snips.convert_snips")
        raise UserError(f"--from {source!r}: use one of {', '.join(SOURCES)}, snips")
    if source == "csv":
        _csv_reader("", opts["delimiter"])  # a bad --delimiter is named before the file is read
    text = files.read_text(src, encoding, errors)
    if source == "csv":
        return _csv_rows(
            src,
            opts["text_col"],
            opts["label_col"],
            opts["template"],
            opts["answer_template"],
            opts["delimiter"],
            text,
        )
    if source == "json-pairs":
        return _pair_rows(src, opts["keys"], opts["template"], opts["answer_template"], text)
    del text  # alpaca and sharegpt may be JSONL: they read the file again, line by line
    if source == "alpaca":
        return _alpaca_rows(src, encoding, errors)
    return _sharegpt_rows(src, encoding, errors)


def _collect(
    src: Path,
    rows: Iterator[Row],
    system: str | None,
    keep: set[str],
    per_label: int | None,
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Validated records (a ``DataError`` names the first bad one) and the count kept per label."""
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
    return records, kept


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
    encoding: str = "utf-8",
    errors: str = "strict",
) -> dict[str, Any]:
    """Convert ``src`` into chat JSONL at ``out`` (atomically); returns counts.

    ``labels`` keeps only examples with those labels (csv and json-pairs); a label that never
    occurs is an error, since it is almost always a typo. ``per_label`` keeps at most that many
    examples of each label, the first ones in file order (a smaller, balanced start for a slow
    machine; deterministic, so a rerun writes the same file). The result's ``short_labels``
    names every kept label with fewer than ``per_label`` rows, with its count.

    ``src`` is decoded with ``encoding`` (a byte-order mark is dropped); ``errors`` is
    ``strict`` (an undecodable byte is an error naming its line and offset), ``replace`` or
    ``ignore``. ``out`` may not be ``src`` (symlinks and hard links included) or a directory.
    Everything is read and checked before ``out`` is written, in one atomic rename.
    """
    src, out = Path(src), Path(out)
    files.require_file(src)
    files.check_output_file(out, src)
    for value, option in (
        (system, "--system"),
        (template, "--template"),
        (answer_template, "--answer-template"),
    ):
        files.check_cli_text(value, option)
    for flag, value in (("--labels", labels), ("--per-label", per_label)):
        if value and source not in ("csv", "json-pairs"):
            raise UserError(
                f"{flag} only applies to labelled sources (csv, json-pairs), not {source}"
            )
    if per_label is not None and per_label < 1:
        raise UserError(f"--per-label {per_label}: must be at least 1")
    opts = {
        "text_col": text_col,
        "label_col": label_col,
        "template": template,
        "answer_template": answer_template,
        "keys": keys,
        "delimiter": delimiter,
    }
    rows = _source_rows(src, source, opts, encoding, errors)
    keep = set(labels or [])
    records, kept = _collect(src, rows, system, keep, per_label)
    if not records:
        raise UserError(
            f"{src}: nothing to write (no records{' with the chosen labels' if keep else ''})"
        )
    try:
        with created_parents(out):  # a failed write leaves no empty folders behind either
            atomic_write_jsonl(out, records)
    except OSError as exc:
        raise UserError(f"{out}: cannot write: {exc.strerror or exc}") from None
    # Labels with fewer rows than the cap: the total falls short of N x labels, and the user
    # must be told which label is thin rather than count the output.
    short = {k: v for k, v in sorted(kept.items()) if per_label is not None and v < per_label}
    return {
        "source": str(src),
        "out": str(out),
        "from": source,
        "examples": len(records),
        "labels": dict(sorted(kept.items())) if kept else None,
        "short_labels": short,
    }
