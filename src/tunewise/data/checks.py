"""``data check``: is this chat JSONL any good, and can training start from it?

Errors (the file cannot be used as it is) come from :mod:`tunewise.data.schema`, every one of them
with its ``file:line: field``. Warnings are about the *valid* examples:

* exact duplicates, and near-duplicate inputs (MinHash/LSH, :mod:`tunewise.data.dedup`);
* conflicting outputs: the same input answered differently;
* outputs that break the dominant format (:mod:`tunewise.data.formats`), with the pattern shown;
* label distribution and rare classes;
* token lengths with the model's own tokenizer and chat template, and the examples that would be
  truncated at ``max_len``;
* PII-looking strings: e-mail addresses, phone numbers, card numbers (Luhn-checked).

Function-call files (lines with ``tools`` or ``tool_calls``) are checked for what they are: the
calls' names and arguments against the tools (errors, :mod:`tunewise.data.tool_checks`), calls
compared as calls (same function and arguments in any key order are the same answer, so the same
request answered with another call is a conflict), the tools left out of input similarity (they
are shared context, like the system prompt), a summary of what the lines answer instead of an
inferred text format, and token lengths with the tools rendered as the model sees them.

Everything is linear or ``n log n`` in the number of examples: 100k examples check in well under a
minute on two cores (``bench/data_check.py``).
"""

from __future__ import annotations

import functools
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewise.data.dedup import near_duplicate_clusters, normalize
from tunewise.data.formats import OutputFormat, infer_labels
from tunewise.data.schema import Example, Problem, _short, input_text, parse_jsonl
from tunewise.data.tool_checks import read_tools_file
from tunewise.errors import UserError
from tunewise.fsio import sha256_json
from tunewise.runtime import chat, models
from tunewise.runtime.tool_calls import TOOLS_FIELD, parse_reply, tool_names

RARE_MIN = 3  # a label with fewer examples than this is rare (when most labels have more)
RARE_SHARE = 0.1  # ... and so is one with under a tenth of the median label's examples
TOKEN_BATCH = 2048
NO_CALL = "(text)"  # the "call" of a final turn that answers in text, in the per-function counts


@dataclass
class Finding:
    """One warning: a kind, a sentence, the lines involved and kind-specific details."""

    kind: str
    message: str
    lines: list[int] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "lines": self.lines,
            "details": self.details,
        }


@dataclass
class CheckReport:
    path: str
    examples: int
    errors: list[Problem]
    warnings: list[Finding]
    stats: dict[str, Any]
    format: OutputFormat | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def exit_code(self, strict: bool = False) -> int:
        """0 clean, 2 on errors, 1 on warnings when ``strict``."""
        if self.errors:
            return 2
        return 1 if strict and self.warnings else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "examples": self.examples,
            "errors": [{**vars(p), "text": str(p)} for p in self.errors],
            "warnings": [w.to_json() for w in self.warnings],
            "stats": self.stats,
            "format": self.format.to_json() if self.format else None,
        }


# ---------------------------------------------------------------- duplicates and conflicts


def _groups(keys: Sequence[Any]) -> list[list[int]]:
    """Indices sharing a key, for every key seen more than once, in first-seen order."""
    by: dict[Any, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        by[k].append(i)
    return [g for g in by.values() if len(g) > 1]


def _turn_key(m: dict[str, Any]) -> Any:
    """What a turn says: its text, or for a call turn its text and its calls, compared as calls
    (the same call written with its arguments in another key order is the same turn)."""
    if not m.get("tool_calls"):
        return m["content"]
    reply = parse_reply(m["content"])
    return (reply.content, tuple(sorted(c.key() for c in reply.calls)))


def _tools_key(ex: Example) -> str:
    """The tools a conversation may call, as one comparable value ("" without tools)."""
    tools = ex.tools
    return sha256_json(tools) if tools else ""


def _duplicates(examples: list[Example], lines: list[int]) -> list[Finding]:
    out: list[Finding] = []
    # Tuples of strings hash in C: much cheaper than a sha256 of each conversation's JSON. The
    # tools are part of a conversation: the same turns with other tools are another example.
    tool_keys = [_tools_key(ex) for ex in examples]
    convs = [
        (tk, *((m["role"], _turn_key(m)) for m in ex.messages))
        for ex, tk in zip(examples, tool_keys, strict=True)
    ]
    exact = _groups(convs)
    if exact:
        extra = sum(len(g) - 1 for g in exact)
        out.append(
            Finding(
                "exact_duplicate",
                f"{extra} exact duplicate example(s) in {len(exact)} group(s); they add weight, "
                "not information",
                sorted(lines[i] for g in exact for i in g[1:]),
                {"groups": [[lines[i] for i in g] for g in exact]},
            )
        )
    norms = [normalize(input_text(ex)) for ex in examples]
    clusters = near_duplicate_clusters(norms, normalized=True)
    near = [g for g in _groups(clusters) if len({convs[i] for i in g}) > 1]
    if near:
        out.append(
            Finding(
                "near_duplicate",
                f"{sum(map(len, near))} examples in {len(near)} near-duplicate cluster(s) of "
                "inputs; "
                "`data split` keeps each cluster in one split",
                sorted(lines[i] for g in near for i in g),
                {"clusters": [[lines[i] for i in g] for g in near]},
            )
        )
    out += _conflicts(examples, lines, norms, tool_keys)
    return out


def _conflicts(
    examples: list[Example], lines: list[int], norms: list[str], tool_keys: list[str]
) -> list[Finding]:
    """Same prompt (same system prompt and tools; other turns equal up to case and punctuation),
    different answers: the model cannot learn both. Calls are compared as calls."""
    out: list[Finding] = []
    systems = [
        ex.messages[0]["content"] if ex.messages[0]["role"] == "system" else "" for ex in examples
    ]
    conflicts = []
    for g in _groups(list(zip(systems, tool_keys, norms, strict=True))):
        answers: dict[Any, str] = {}
        for i in g:
            last = examples[i].messages[-1]
            key = _turn_key(last) if last.get("tool_calls") else last["content"].strip()
            answers.setdefault(key, examples[i].target.strip())
        if len(answers) > 1:
            conflicts.append((g, sorted(answers.values())))
    if conflicts:
        out.append(
            Finding(
                "conflict",
                f"{len(conflicts)} input(s) answered differently in different examples",
                sorted(lines[i] for g, _ in conflicts for i in g),
                {
                    "groups": [
                        {"lines": [lines[i] for i in g], "answers": a[:5]} for g, a in conflicts
                    ]
                },
            )
        )
    return out


# ---------------------------------------------------------------- format and labels


def _format_findings(
    fmt: OutputFormat,
    labels: list[dict[str, str] | None],
    examples: list[Example],
    lines: list[int],
) -> tuple[list[Finding], dict[str, Any]]:
    out: list[Finding] = []
    stats: dict[str, Any] = {}
    if fmt.kind == "text":
        return out, stats
    outliers = [i for i, ex in enumerate(examples) if fmt.parse(ex.target) is None]
    if outliers:
        out.append(
            Finding(
                "format",
                f"{len(outliers)} of {len(examples)} outputs break the dominant format "
                f"{fmt.pattern!r}",
                [lines[i] for i in outliers],
                {
                    "pattern": fmt.pattern,
                    "regex": fmt.regex,
                    "samples": [
                        {"line": lines[i], "output": examples[i].target[:200]}
                        for i in outliers[:10]
                    ],
                },
            )
        )
    for f in fmt.label_fields:
        counts = Counter(lab[f] for lab in labels if lab and f in lab)
        stats[f] = dict(counts.most_common())
        out += _rare_findings(f, counts, [lab.get(f) if lab else None for lab in labels], lines)
    return out, stats


def _rare_findings(
    f: str, counts: Counter[str], values: Sequence[str | None], lines: list[int]
) -> list[Finding]:
    """A ``rare_label`` finding for the values of ``f`` with few examples (``values``: each
    example's value, None when it has none)."""
    if len(counts) < 2:
        return []
    median = statistics.median(counts.values())
    # Below the floor AND below the typical label: a tiny file where every label has 2
    # examples has no "rare" one, it is just small.
    rare = {
        v: c for v, c in counts.items() if c < max(RARE_MIN, RARE_SHARE * median) and c < median
    }
    if not rare:
        return []
    rare_lines = [lines[i] for i, v in enumerate(values) if v in rare]
    shown = ", ".join(f"{v!r} ({c})" for v, c in sorted(rare.items(), key=lambda kv: kv[1])[:8])
    return [
        Finding(
            "rare_label",
            f"{len(rare)} rare value(s) of {f!r} (median {median:g} per value): {shown}",
            rare_lines,
            {"field": f, "rare": rare, "median": median},
        )
    ]


# ---------------------------------------------------------------- function calls


def read_tools(path: str | Path) -> list[dict[str, Any]]:
    """The tool schemas of a JSON file (``data check --tools``), each one valid (else a
    ``DataError`` naming the first problem)."""
    return read_tools_file(path, _short)


def is_tool_data(examples: Sequence[Example]) -> bool:
    """True when any line has tools or any turn calls one or answers a call."""
    return any(
        ex.tools or any(m.get("tool_calls") or m["role"] == "tool" for m in ex.messages)
        for ex in examples
    )


def _tool_findings(
    examples: list[Example], lines: list[int]
) -> tuple[list[Finding], dict[str, Any], dict[str, Any]]:
    """What a function-call file answers (in place of an inferred output format): the number of
    functions, the lines whose answer calls and those that answer in text; the calls per function
    (as label statistics, rare functions included); lines that call with no tools known."""
    functions = {n for ex in examples for n in tool_names(ex.tools) if n}
    per_line: list[str] = []
    counts: Counter[str] = Counter()
    unchecked = []
    for i, ex in enumerate(examples):
        last = ex.messages[-1]
        names = [c.name for c in parse_reply(ex.target).calls] if last.get("tool_calls") else []
        counts.update(names or [NO_CALL])
        per_line.append(names[0] if len(set(names)) == 1 else NO_CALL if not names else "")
        if not ex.tools and any(m.get("tool_calls") for m in ex.messages):
            unchecked.append(i)
    calling = sum(1 for v in per_line if v != NO_CALL)
    stats = {
        "functions": len(functions),
        "calling": calling,
        "text": len(examples) - calling,
        "calls": sum(n for k, n in counts.items() if k != NO_CALL),
    }
    out = _rare_findings("call", counts, per_line, lines)
    if unchecked:
        out.append(
            Finding(
                "tools_unknown",
                f"{len(unchecked)} line(s) call functions but no tools are given (a "
                f"'{TOOLS_FIELD}' list on the line, or --tools FILE / task.tools): names and "
                "arguments not checked",
                [lines[i] for i in unchecked],
            )
        )
    return out, stats, {"call": dict(counts.most_common())}


# ---------------------------------------------------------------- token lengths


def _encode_lengths(tokenizer: Any, texts: list[str]) -> list[int]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the Rust batch encoder, without transformers' per-call wrapping
        return [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]
    enc = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)
    return [len(ids) for ids in enc["input_ids"]]


def _special_splitter(tokenizer: Any) -> re.Pattern[str] | None:
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    specials = sorted({t.content for t in added.values() if t.content}, key=len, reverse=True)
    return re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None


def token_lengths(
    tokenizer: Any,
    conversations: Sequence[list[dict[str, str]]],
    progress: Callable[[int], None] | None = None,
) -> list[int]:
    """Tokens per conversation after the chat template (as training sees it).

    A fast tokenizer cuts its input at added (special) tokens and encodes the pieces in
    between independently, so a conversation's length is its number of special tokens plus the
    lengths of its pieces. The pieces repeat a lot (the system prompt, role headers, label
    answers), so each distinct piece is encoded once: about half the work on a typical file. A
    spread sample is checked against whole-text encoding, and any difference (a tokenizer with
    other rules) falls back to encoding every text whole.
    """
    texts = _rendered(tokenizer, conversations, progress)
    splitter = _special_splitter(tokenizer)
    if splitter is None or not texts:
        return _encode_lengths(tokenizer, texts)
    pieces: dict[str, int] = {}
    per_text: list[tuple[int, list[int]]] = []
    for t in texts:
        parts = splitter.split(t)  # pieces at even positions, special tokens at odd ones
        ids = [pieces.setdefault(p, len(pieces)) for p in parts[0::2] if p]
        per_text.append((len(parts) // 2, ids))
    piece_len = _encode_lengths(tokenizer, list(pieces))
    lengths = [n_special + sum(piece_len[i] for i in ids) for n_special, ids in per_text]
    sample = list(range(0, len(texts), max(1, len(texts) // 64)))
    if _encode_lengths(tokenizer, [texts[i] for i in sample]) != [lengths[i] for i in sample]:
        return _encode_lengths(tokenizer, texts)
    return lengths


def _rendered(
    tokenizer: Any,
    conversations: Sequence[list[dict[str, Any]]],
    progress: Callable[[int], None] | None,
) -> list[str]:
    """The conversations as the chat template renders them: a batch at a time, or one at a time
    through :func:`chat.render_for_count` when tools are involved, so that the tools are counted
    the way training and inference show them (``tools=``, or the fallback prompt)."""
    texts: list[str] = []
    tools = any(
        m.get(TOOLS_FIELD) or m.get("tool_calls") or m["role"] == "tool"
        for conv in conversations
        for m in conv
    )
    for s in range(0, len(conversations), TOKEN_BATCH):
        batch = list(conversations[s : s + TOKEN_BATCH])
        if tools:
            texts.extend(chat.render_for_count(tokenizer, conv) for conv in batch)
        else:
            texts.extend(tokenizer.apply_chat_template(batch, tokenize=False))
        if progress:
            progress(len(batch))
    return texts


def _load_tokenizer(model: str | None) -> tuple[Any, str]:
    ref = models.resolve(model, allow_download=False)
    return _cached_tokenizer(str(ref.path), ref.weight_hash), ref.name


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(path: str, weight_hash: str) -> Any:
    # A workflow checks several files with one model;
    # loading the tokenizer is most of a small check.
    return models.load_tokenizer(
        models.ModelRef(name=path, path=Path(path), weight_hash=weight_hash, source="local")
    )


def _length_findings(
    lengths: list[int], max_len: int, lines: list[int]
) -> tuple[list[Finding], dict[str, Any]]:
    ordered = sorted(lengths)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    long = [i for i, n in enumerate(lengths) if n > max_len]
    stats = {
        "min": ordered[0],
        "mean": round(sum(ordered) / len(ordered), 1),
        "p50": pct(0.5),
        "p95": pct(0.95),
        "max": ordered[-1],
        "total": sum(ordered),
        "max_len": max_len,
        "over_max_len": len(long),
    }
    out = []
    if long:
        out.append(
            Finding(
                "too_long",
                f"{len(long)} example(s) longer than max_len={max_len} tokens would be truncated "
                f"(longest {ordered[-1]})",
                [lines[i] for i in long],
                {"lengths": {str(lines[i]): lengths[i] for i in long[:50]}},
            )
        )
    return out, stats


# ---------------------------------------------------------------- PII

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]?\d{4}(?![\w])"
    r"|(?<![\w+])\+\d{1,3}(?:[ .-]?\d{2,4}){3,5}(?!\w)"
)
# Phones and cards both need 10+ characters of digits and separators: a cheap first filter.
_NUMBERISH = re.compile(r"\d[\d ().+-]{8,}\d")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _mask(s: str) -> str:
    return s[:2] + "*" * max(0, len(s) - 4) + s[-2:] if len(s) > 4 else "****"


def find_pii(text: str) -> dict[str, list[str]]:
    """E-mails, phone numbers and Luhn-valid card numbers in ``text``."""
    found: dict[str, list[str]] = {}
    if "@" in text:
        emails = _EMAIL.findall(text)
        if emails:
            found["email"] = emails
    if _NUMBERISH.search(text):
        cards = [c for c in _CARD.findall(text) if luhn_ok(re.sub(r"\D", "", c))]
        if cards:
            found["card"] = cards
        phones = [p for p in _PHONE.findall(text) if not any(p in c for c in cards)]
        if phones:
            found["phone"] = phones
    return found


def _pii_findings(examples: list[Example], lines: list[int]) -> list[Finding]:
    hits: dict[str, list[tuple[int, str]]] = defaultdict(list)
    seen: dict[str, dict[str, list[str]]] = {}  # a shared system prompt is scanned once
    for i, ex in enumerate(examples):
        for m in ex.messages:
            text = m["content"]
            found = seen.get(text)
            if found is None:
                found = seen[text] = find_pii(text)
            for kind, values in found.items():
                hits[kind].extend((lines[i], v) for v in values)
    out = []
    names = {
        "email": "e-mail address(es)",
        "phone": "phone number(s)",
        "card": "card number(s) (Luhn-valid)",
    }
    for kind in ("email", "phone", "card"):
        if kind in hits:
            found = hits[kind]
            out.append(
                Finding(
                    f"pii_{kind}",
                    f"{len(found)} {names[kind]} found; remove or mask personal data before "
                    "training",
                    sorted({ln for ln, _ in found}),
                    {"samples": [{"line": ln, "value": _mask(v)} for ln, v in found[:10]]},
                )
            )
    return out


# ---------------------------------------------------------------- entry points


def check_examples(
    examples: list[Example],
    *,
    errors: list[Problem] | None = None,
    path: str = "",
    tokenizer: Any = None,
    model_name: str | None = None,
    max_len: int = 512,
    output_pattern: str | None = None,
    progress: Callable[[str], None] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> CheckReport:
    """Warnings and statistics for already-parsed examples (``tokenizer`` None: no token stats;
    ``tools``: the project's, for examples without their own)."""
    say = progress or (lambda _msg: None)
    lines = [ex.line for ex in examples]
    warnings: list[Finding] = []
    stats: dict[str, Any] = {
        "examples": len(examples),
        "errors": len(errors or []),
        "multi_turn": sum(
            1 for ex in examples if sum(m["role"] == "user" for m in ex.messages) > 1
        ),
        "with_system_prompt": sum(1 for ex in examples if ex.messages[0]["role"] == "system"),
    }
    fmt: OutputFormat | None = None
    if examples:
        examples = [ex.with_tools(tools) for ex in examples]
        say("duplicates")
        warnings += _duplicates(examples, lines)
        say("format")
        if is_tool_data(examples):  # calls, not a text format: see _tool_findings
            found, stats["tools"], stats["labels"] = _tool_findings(examples, lines)
        else:
            fmt, labels = infer_labels([ex.target for ex in examples], output_pattern)
            found, stats["labels"] = _format_findings(fmt, labels, examples, lines)
        warnings += found
        if tokenizer is not None:
            say("tokens")
            # with_system(""): the tools ride on the system turn, as training renders them
            convs = [ex.with_system("").messages for ex in examples]
            lengths = token_lengths(tokenizer, convs)
            found, stats["tokens"] = _length_findings(lengths, max_len, lines)
            stats["tokens"]["model"] = model_name
            warnings += found
        say("pii")
        warnings += _pii_findings(examples, lines)
    return CheckReport(
        path=path,
        examples=len(examples),
        errors=list(errors or []),
        warnings=warnings,
        stats=stats,
        format=fmt,
    )


def check_file(
    path: str | Path,
    *,
    model: str | None = None,
    max_len: int = 512,
    tokenizer: Any = None,
    output_pattern: str | None = None,
    progress: Callable[[str], None] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> CheckReport:
    """Check a chat JSONL file: all errors, then warnings and statistics on its valid examples.

    Token lengths use ``tokenizer`` when given, else the tokenizer of ``model`` (default: the
    embedded model). When the default model is not installed the token statistics are skipped
    with a warning; a ``model`` the user named must resolve. ``tools`` are the project's
    (``task.tools``, or ``data check --tools FILE``): lines without their own may call them.
    """
    path = Path(path)
    (progress or (lambda _m: None))("parsing")
    examples, problems = parse_jsonl(path, tools)
    if not examples and not problems:
        raise UserError(f"{path}: no examples (the file is empty)")
    model_name = model
    skipped: Finding | None = None
    if tokenizer is None and examples:
        try:
            tokenizer, model_name = _load_tokenizer(model)
        except UserError as err:
            if model is not None:
                raise
            skipped = Finding("tokens_skipped", f"token lengths not measured: {err}")
    report = check_examples(
        examples,
        errors=problems,
        path=str(path),
        tokenizer=tokenizer,
        model_name=model_name,
        max_len=max_len,
        output_pattern=output_pattern,
        progress=progress,
        tools=tools,
    )
    if skipped:
        report.warnings.append(skipped)
    return report
