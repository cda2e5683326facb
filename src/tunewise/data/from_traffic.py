"""Served traffic to examples worth a label: ``tunewise data from-traffic``.

The traffic log (:mod:`tunewise.serve.traffic`) holds one record per answered request. This module
turns those records into *drafts*: normal chat lines whose last turn is the production answer,
each with an ``origin`` object that says where it came from::

    {"messages": [...the request's turns..., {"role": "assistant", "content": <production answer>}],
     "origin": {"traffic_id": <record id>, "traffic_file": <log file name>, "time": <record time>,
                "why": <selection reason>, "labelled_by": null}}

``origin``'s keys are an interface (:data:`ORIGIN_KEYS`): ``compare-traffic`` matches labels to
requests by ``traffic_id``, registry lineage reads ``traffic_file``/``time`` windows and
``labelled_by`` (null for a draft, ``"human"`` after ``tunewise rate --label``,
``"teacher:<model>"`` for a teacher's answer, :mod:`tunewise.data.teacher`).

The flow, each step a function a test can call alone:

1. :func:`read_items`: every record the log's reader (:func:`tunewise.serve.traffic.iter_traffic`,
   which skips a torn last line) found, as a :class:`TrafficItem`; a record that misses a field
   is a ``file:line`` error. A call answer becomes an OpenAI-format assistant turn with
   ``tool_calls``; a shadow record (``shadow_of``) or a ``shadow`` object on the production
   record gives the challenger's answer.
2. :func:`drop_known`: requests whose input is an exact or near-duplicate of a train, val or test
   line are dropped, and so are repeats within the traffic (the first is kept), with the MinHash
   clusters ``data split`` keeps whole (:func:`tunewise.data.dedup.near_duplicate_clusters`).
   A test-like request must never become training data, or the sealed test score turns into a
   memory score.
3. :func:`rank`: what is worth a label first. The reasons, in this order: a low constrained-label
   margin (the model hesitated between labels), the shadow challenger answered otherwise, the
   production answer fails the project's format; then the rest. The signals themselves need the
   graders and a model (:mod:`tunewise.eval.traffic_signals`); they come in as callables.
4. :func:`draft_row` and :func:`write_rows`: the lines, written atomically.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewise.config import ProjectConfig
from tunewise.data.dedup import THRESHOLD, near_duplicate_clusters, normalize
from tunewise.data.labels import normalise
from tunewise.data.schema import Example, Problem, input_text, load_examples, validate_record
from tunewise.errors import DataError, UserError
from tunewise.fsio import atomic_write_jsonl
from tunewise.runtime.tool_calls import (
    TOOLS_FIELD,
    call_from_openai,
    canonical_message,
    parse_reply,
    reply_text,
)

ORIGIN = "origin"
# The agreed interface of a line's "origin" (compare-traffic, registry lineage): keep these keys.
ORIGIN_KEYS = ("traffic_id", "traffic_file", "time", "why", "labelled_by")
SPLIT_ORDER = ("test", "val", "train")  # a request like several splits is counted at the first
LOW_MARGIN = 1.0  # nats: the runner-up label is at least e^-1 (37%) as likely as the chosen one
SHADOW_LINK = "shadow_of"  # a separate shadow record names the production record's id here
# Selection reasons, in ranking order (see the module docstring); REST is everything else.
LOW_MARGIN_WHY, DISAGREE_WHY, FORMAT_WHY, REST_WHY = (
    "low_margin",
    "disagreement",
    "format_failed",
    "rest",
)
REASONS = (LOW_MARGIN_WHY, DISAGREE_WHY, FORMAT_WHY)

# (examples) -> (margin per example, or None with a note saying why none was scored)
MarginScorer = Callable[[list[Example]], tuple[list[float] | None, str | None]]
# (answer text, tools) -> False when the answer breaks the task's format; None: no format to check
FormatCheck = Callable[[str, list[dict[str, Any]]], bool | None]


@dataclass
class TrafficItem:
    """One logged request: where it is, the draft example, and what makes it worth a label."""

    record: dict[str, Any]
    file: str  # the log file's name (the lineage window is per file)
    line: int
    row: dict[str, Any]  # the draft line without "origin": messages (+ tools)
    challenger: str | None = None  # the shadow's answer as canonical text, when it answered
    margin: float | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.record["id"])

    @property
    def example(self) -> Example:
        msgs = [canonical_message(m) for m in self.row["messages"]]
        meta = {k: v for k, v in self.row.items() if k != "messages"}
        return Example(msgs, self.line, self.file, meta)

    @property
    def answer(self) -> str:
        """The production answer as canonical text (calls as ``<tool_call>`` blocks)."""
        return canonical_message(self.row["messages"][-1])["content"]

    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self.row.get(TOOLS_FIELD) or [])

    @property
    def why(self) -> str:
        return "+".join(self.reasons) or REST_WHY


@dataclass
class Selection:
    """What :func:`select` kept (ranked), and how many requests went where."""

    items: list[TrafficItem]
    counts: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- answers


def answer_text(answer: str, tool_calls: Any) -> str:
    """An answer as canonical text: its calls (OpenAI entries) as ``<tool_call>`` blocks after
    the text the model wrote outside them; the text itself when it made no call."""
    if not tool_calls:
        return answer
    calls = [call_from_openai(c) for c in tool_calls]
    return reply_text(parse_reply(answer).content, calls)


def same_answer(a: str, b: str) -> bool:
    """Whether two answers say the same: the same calls (name and arguments as JSON values, in
    any order) when either makes a call, else the same text up to whitespace (exact match)."""
    ra, rb = parse_reply(a), parse_reply(b)
    if ra.calls or rb.calls or ra.problems or rb.problems:
        if ra.problems or rb.problems:
            return False
        return Counter(c.key() for c in ra.calls) == Counter(c.key() for c in rb.calls)
    return normalise(a) == normalise(b)


def assistant_turn(answer: str) -> dict[str, Any]:
    """An answer (canonical text) as an OpenAI-format assistant turn: ``tool_calls`` (ids
    ``call_0``...) and the text outside them, or the text alone."""
    reply = parse_reply(answer)
    if not reply.calls or reply.problems:
        return {"role": "assistant", "content": answer}
    return {
        "role": "assistant",
        "content": reply.content or None,
        "tool_calls": [c.to_openai(f"call_{i}") for i, c in enumerate(reply.calls)],
    }


# --------------------------------------------------------------------------- reading the log


def _turn(m: Any, where: str, path: Path, line: int) -> dict[str, Any]:
    """A request turn as a data turn: text content (text parts joined), calls, tool ids."""
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise DataError(str(path), line, where, "expected a turn with a role")
    content = m.get("content")
    if isinstance(content, list):  # OpenAI content parts: the text ones are what a model reads
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    out: dict[str, Any] = {"role": m["role"], "content": content}
    for key in ("tool_calls", "tool_call_id"):
        if m.get(key) is not None:
            out[key] = m[key]
    return out


def _require(rec: dict[str, Any], path: Path, line: int) -> dict[str, Any]:
    """The record, or a ``file:line: field: message`` error naming what it lacks."""
    if not isinstance(rec, dict):
        raise DataError(str(path), line, "(line)", f"expected a record, got {type(rec).__name__}")
    if SHADOW_LINK in rec:
        if not isinstance(rec[SHADOW_LINK], str):
            raise DataError(str(path), line, SHADOW_LINK, "expected the production record's id")
        return rec
    if not isinstance(rec.get("id"), str) or not rec["id"]:
        raise DataError(str(path), line, "id", "missing: every traffic record has an id")
    if not isinstance(rec.get("messages"), list) or not rec["messages"]:
        raise DataError(str(path), line, "messages", "expected a non-empty list of turns")
    if not isinstance(rec.get("answer"), str):
        raise DataError(str(path), line, "answer", "expected the answer's text")
    for key in ("tool_calls", "tools"):
        if rec.get(key) is not None and not isinstance(rec[key], list):
            raise DataError(str(path), line, key, f"expected a list, got {type(rec[key]).__name__}")
    return rec


def _draft(rec: dict[str, Any], path: Path, line: int) -> dict[str, Any]:
    turns = [_turn(m, f"messages[{i}]", path, line) for i, m in enumerate(rec["messages"])]
    row: dict[str, Any] = {"messages": turns}
    if rec.get("tools"):
        row[TOOLS_FIELD] = rec["tools"]
    if rec.get("tool_calls"):
        try:
            text = answer_text(rec["answer"], rec["tool_calls"])
        except ValueError as exc:
            raise DataError(str(path), line, "tool_calls", str(exc)) from None
        row["messages"].append(assistant_turn(text))
    else:
        row["messages"].append({"role": "assistant", "content": rec["answer"]})
    return row


def blank_answer(row: Any) -> bool:
    """Whether a line's last turn is an assistant turn with neither text nor calls: production
    answered nothing (only whitespace, or it stopped at once)."""
    msgs = row.get("messages") if isinstance(row, dict) else None
    last = msgs[-1] if isinstance(msgs, list) and msgs else None
    if not isinstance(last, dict) or last.get("role") != "assistant" or last.get("tool_calls"):
        return False
    content = last.get("content")
    return content is None or (isinstance(content, str) and not content.strip())


def draft_problems(
    row: Any, where: str, line: int, tools: list[dict[str, Any]] | None = None
) -> list[Problem]:
    """What makes ``row`` no valid draft. A blank production answer is allowed: that request is
    the one most worth a label, and a person or a teacher replaces the answer (a blank answer
    is never training data: accepting it as it is makes no valid line). The request's own turns
    must still make a valid line."""
    problems = validate_record(row, where, line, tools=tools)
    if problems and blank_answer(row):
        stand_in = {"role": "assistant", "content": "(answer)"}
        row = {**row, "messages": [*row["messages"][:-1], stand_in]}
        problems = validate_record(row, where, line, tools=tools)
    return problems


def _checked(
    row: dict[str, Any], where: str, line: int, tools: list[dict[str, Any]] | None
) -> tuple[dict[str, Any] | None, Problem | None]:
    """The row if it is a valid draft; a call answer that breaks its tools falls back to its
    text (the draft stays loadable, and its format failure is what a person corrects); else the
    first problem."""
    problems = draft_problems(row, where, line, tools=tools)
    last = row["messages"][-1]
    if problems and last.get("tool_calls"):
        text = canonical_message(last)["content"]
        row = {**row, "messages": [*row["messages"][:-1], {"role": "assistant", "content": text}]}
        problems = draft_problems(row, where, line, tools=tools)
    return (row, None) if not problems else (None, problems[0])


def read_items(
    records: Iterable[tuple[Path, int, dict[str, Any]]],
    tools: list[dict[str, Any]] | None = None,
) -> tuple[list[TrafficItem], Counter[str], list[str]]:
    """Every logged request as a :class:`TrafficItem`, in the order given; the counts of what
    was read; notes on requests that make no valid example (a conversation the data format
    refuses), which are counted and left out. A blank production answer is kept: a draft for a
    person or a teacher to answer (:func:`draft_problems`).

    ``records``: (file, line, record) as :func:`tunewise.serve.traffic.iter_traffic` reads them,
    production's and the shadow's (linked by ``shadow_of``) together; a record that lacks a field
    is a ``file:line`` error."""
    counts: Counter[str] = Counter()
    notes: list[str] = []
    items: list[TrafficItem] = []
    shadows: dict[str, dict[str, Any]] = {}
    for path, line, rec in records:
        path = Path(path)
        _require(rec, path, line)
        if SHADOW_LINK in rec:
            shadows[str(rec[SHADOW_LINK])] = rec
            counts["shadow records"] += 1
            continue
        counts["requests"] += 1
        row, problem = _checked(_draft(rec, path, line), path.name, line, tools)
        if row is None:
            counts["no valid example"] += 1
            if len(notes) < 3:
                notes.append(f"left out {problem}")
            continue
        items.append(TrafficItem(rec, path.name, line, row))
    for item in items:
        shadow = item.record.get("shadow")
        shadow = shadow if isinstance(shadow, dict) else shadows.get(item.id)
        item.challenger = _challenger(shadow)
    return items, counts, notes


def _challenger(shadow: dict[str, Any] | None) -> str | None:
    if not shadow or not isinstance(shadow.get("answer"), str):
        return None  # no shadow, or it failed: nothing to disagree with
    try:
        return answer_text(shadow["answer"], shadow.get("tool_calls"))
    except ValueError:
        return shadow["answer"]


# --------------------------------------------------------------------------- de-duplication


def load_known(cfg: ProjectConfig) -> tuple[dict[str, list[Example]], float, str | None]:
    """The project's train/val/test examples, the near-duplicate threshold its split used, and a
    note when there is nothing to compare with.

    The splits are ``.tunewise/splits/{train,val,test}.jsonl`` (what ``data split`` and
    ``tunewise run`` write); before any split, the files ``data`` names. The sealed test file is
    read here with :func:`load_examples`, not through :func:`tunewise.data.seal.guard`: ``guard``
    gates *evaluating* on the test set and records each final use, and this reads it only to keep
    its requests out of new training data; nothing is scored on it, so no final use is recorded
    and no ``--final`` is needed.
    """
    folder = cfg.work_dir / "splits"
    tools = cfg.task.tools if isinstance(cfg.task.tools, list) else None
    given = {"train": cfg.data.train, "val": cfg.data.val, "test": cfg.data.test}
    paths = {s: folder / f"{s}.jsonl" for s in SPLIT_ORDER}
    if not any(p.is_file() for p in paths.values()):
        paths = {s: p for s, p in given.items() if p is not None}
    known = {s: load_examples(p, tools) for s, p in paths.items() if p.is_file()}
    threshold = THRESHOLD
    manifest = folder / "manifest.json"
    if manifest.is_file():
        # an unreadable or older manifest: the default, which the split used then
        with contextlib.suppress(ValueError, KeyError, TypeError, OSError):
            threshold = float(json.loads(manifest.read_text())["near_duplicate_threshold"])
    note = None if known else f"no train/val/test files under {cfg.root}: nothing to compare with"
    return known, threshold, note


def drop_known(
    items: list[TrafficItem],
    known: dict[str, list[Example]],
    *,
    threshold: float = THRESHOLD,
) -> tuple[list[TrafficItem], Counter[str]]:
    """The items whose input is like no known example and no earlier item, and the counts of
    the rest (``exact test``, ``near train``, ``repeated in traffic``, ...)."""
    owners = [s for s in SPLIT_ORDER for _ in known.get(s, [])]
    texts = [input_text(ex) for s in SPLIT_ORDER for ex in known.get(s, [])]
    norms = [normalize(t) for t in texts] + [normalize(input_text(it.example)) for it in items]
    clusters = near_duplicate_clusters(norms, threshold=threshold, normalized=True)
    exact: dict[str, str] = {}
    near: dict[int, str] = {}
    for i, owner in enumerate(owners):  # the first split wins: test, then val, then train
        exact.setdefault(norms[i], owner)
        near.setdefault(clusters[i], owner)
    counts: Counter[str] = Counter()
    kept: list[TrafficItem] = []
    seen: set[int] = set()
    for k, item in enumerate(items):
        i = len(owners) + k
        if norms[i] in exact:
            counts[f"exact {exact[norms[i]]}"] += 1
        elif clusters[i] in near:
            counts[f"near {near[clusters[i]]}"] += 1
        elif clusters[i] in seen:
            counts["repeated in traffic"] += 1
        else:
            seen.add(clusters[i])
            kept.append(item)
    return kept, counts


# --------------------------------------------------------------------------- ranking


def mark(
    items: list[TrafficItem],
    *,
    format_ok: FormatCheck | None = None,
    margins: MarginScorer | None = None,
    low_margin: float = LOW_MARGIN,
) -> list[str]:
    """Give each item its reasons (see :data:`REASONS`); returns notes (a margin not scored)."""
    notes: list[str] = []
    scored = None
    if margins is not None and items:
        scored, note = margins([it.example for it in items])
        if note:
            notes.append(note)
    for k, item in enumerate(items):
        reasons = []
        if scored is not None:
            item.margin = scored[k]
            if scored[k] < low_margin:
                reasons.append(LOW_MARGIN_WHY)
        if item.challenger is not None and not same_answer(item.answer, item.challenger):
            reasons.append(DISAGREE_WHY)
        blank = not item.answer.strip()  # no format holds an empty answer, checked or not
        if blank or (format_ok is not None and format_ok(item.answer, item.tools) is False):
            reasons.append(FORMAT_WHY)
        item.reasons = reasons
    return notes


def rank(items: list[TrafficItem]) -> list[TrafficItem]:
    """Most worth a label first: by the first reason (:data:`REASONS` order, then the rest),
    then the lowest margin, then the oldest request."""

    def key(pair: tuple[int, TrafficItem]) -> tuple[int, float, int]:
        k, item = pair
        tier = REASONS.index(item.reasons[0]) if item.reasons else len(REASONS)
        margin = item.margin if item.margin is not None else math.inf
        return tier, margin, k

    return [item for _, item in sorted(enumerate(items), key=key)]


def select(
    items: list[TrafficItem],
    known: dict[str, list[Example]],
    *,
    threshold: float = THRESHOLD,
    format_ok: FormatCheck | None = None,
    margins: MarginScorer | None = None,
    low_margin: float = LOW_MARGIN,
    limit: int | None = None,
) -> Selection:
    """:func:`drop_known`, :func:`mark`, :func:`rank`, then the first ``limit``."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, not {limit}")
    kept, counts = drop_known(items, known, threshold=threshold)
    notes = mark(kept, format_ok=format_ok, margins=margins, low_margin=low_margin)
    ranked = rank(kept)
    if limit is not None and len(ranked) > limit:
        counts["over --limit"] = len(ranked) - limit
        ranked = ranked[:limit]
    for item in ranked:
        counts[f"why {item.why}"] += 1
    return Selection(ranked, counts, notes)


# --------------------------------------------------------------------------- writing


def origin(item: TrafficItem, labelled_by: str | None = None) -> dict[str, Any]:
    """The line's ``origin`` (:data:`ORIGIN_KEYS`, exactly)."""
    values = (item.id, item.file, item.record.get("time"), item.why, labelled_by)
    return dict(zip(ORIGIN_KEYS, values, strict=True))


def draft_row(item: TrafficItem) -> dict[str, Any]:
    """The line for labelling: the request, the production answer as the draft, the origin."""
    return {**item.row, ORIGIN: origin(item)}


def write_rows(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """``rows`` as JSONL at ``path``, atomically (a crash leaves the old file or the new one)."""
    try:
        atomic_write_jsonl(path, rows)
    except OSError as exc:
        raise UserError(f"{path}: cannot write: {exc.strerror or exc}") from None
