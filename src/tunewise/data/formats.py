"""What do the assistant outputs look like, and what is each example's label?

Split stratification, ``data check``, the eval graders and ``tunewise init`` all need the same
answer, so it lives here once. :func:`infer_format` looks at every target and picks the dominant
shape:

* ``fields``: every line is ``Key: value`` with the same keys in the same order, e.g.
  ``Category: <category>\\nPriority: <priority>``; the regex has one named group per key;
* ``json``: a JSON object with the same set of keys;
* ``label``: a short single line (an intent name, a class);
* ``text``: anything else (free text, no labels).

A field is a *label field* when its values are categorical (few distinct, short values); free-text
fields (``Answer: ...``) are part of the format but not labels. Outputs that do not match the
dominant shape are the format *outliers*.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tunewise.errors import UserError

Kind = Literal["fields", "json", "label", "text"]

# `Key: value` where the key looks like a field name, not like a sentence with a colon in it.
_FIELD_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9 _/-]{0,39}?)\s*:\s*(.*?)\s*$")
_GROUP = re.compile(r"\(\?P<(\w+)>(?:[^()\\]|\\.)*\)")
LABEL_MAX_CHARS = 64
MIN_SHARE = 0.5  # a shape must cover at least half of the outputs to be "the" format


def _slug(key: str) -> str:
    s = re.sub(r"\W+", "_", key.strip().lower()).strip("_")
    return s if s and not s[0].isdigit() else f"f_{s}"


def _field_lines(text: str) -> list[tuple[str, str]] | None:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    out = []
    for ln in lines:
        m = _FIELD_LINE.match(ln)
        if m is None or not m.group(2):
            return None
        out.append((m.group(1), m.group(2)))
    return out


def _json_object(text: str) -> dict[str, Any] | None:
    t = text.strip()
    if not t.startswith("{"):
        return None
    try:
        obj = json.loads(t)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _is_categorical(values: Sequence[str]) -> bool:
    """Few distinct, short values: a label, not free text."""
    if not values:
        return False
    distinct = set(values)
    mean_len = sum(len(v) for v in values) / len(values)
    return len(distinct) <= max(2, len(values) // 2) and mean_len <= 40


def _label_str(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


@dataclass
class OutputFormat:
    """The dominant shape of the outputs.

    ``regex`` (``fields`` and ``label`` kinds) has one named group per field and is what
    ``task.output_pattern`` holds; ``pattern`` is the same thing for people to read.
    """

    kind: Kind
    pattern: str
    regex: str | None = None
    fields: list[str] = field(default_factory=list)
    label_fields: list[str] = field(default_factory=list)
    coverage: float = 1.0
    labels: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rx = re.compile(self.regex) if self.regex else None
        # Label outputs repeat a lot (150 intents over 20k examples): parse each distinct one once.
        self._parsed: dict[str, dict[str, str] | None] = {}

    def parse(self, text: str) -> dict[str, str] | None:
        """Every field of ``text``, or None when it breaks the format (always {} for ``text``)."""
        if text in self._parsed:
            found = self._parsed[text]
            return None if found is None else dict(found)
        found = self._parse(text)
        if len(self._parsed) < 1_000_000:
            self._parsed[text] = found
        return None if found is None else dict(found)

    def _parse(self, text: str) -> dict[str, str] | None:
        if self.kind == "text":
            return {}
        if self.kind == "json":
            obj = _json_object(text)
            if obj is None or sorted(obj) != sorted(self.fields):
                return None
            return {k: _label_str(v) for k, v in obj.items()}
        assert self._rx is not None
        m = self._rx.match(text.strip())
        if m is None:
            return None
        return {k: (v or "").strip() for k, v in m.groupdict().items()}

    def label_of(self, text: str) -> dict[str, str] | None:
        """The label fields of ``text`` (None when it breaks the format or there are no labels)."""
        if not self.label_fields:
            return None
        parsed = self.parse(text)
        if parsed is None:
            return None
        return {k: parsed[k] for k in self.label_fields if k in parsed}

    def label_key(self, text: str) -> str | None:
        """One string per label combination, e.g. ``billing|high``: the stratum of an example."""
        lab = self.label_of(text)
        return None if lab is None else "|".join(lab[k] for k in self.label_fields)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "pattern": self.pattern,
            "regex": self.regex,
            "fields": self.fields,
            "label_fields": self.label_fields,
            "coverage": round(self.coverage, 4),
            "labels": self.labels,
        }

    @classmethod
    def from_regex(cls, regex: str, targets: Sequence[str] | None = None) -> OutputFormat:
        """A format given by the user (``task.output_pattern``); label fields found from targets."""
        try:
            rx = re.compile(regex)
        except re.error as exc:
            raise UserError(f"output_pattern: invalid regex {regex!r}: {exc}") from None
        names = list(rx.groupindex)
        readable = _GROUP.sub(lambda m: f"<{m.group(1)}>", regex).strip("^$").replace("\\n", "\n")
        fmt = cls(kind="fields", pattern=readable, regex=regex, fields=names, label_fields=names)
        if targets:
            _fill_labels(fmt, targets)
        return fmt


def _fill_labels(fmt: OutputFormat, targets: Sequence[str]) -> None:
    parsed = [fmt.parse(t) for t in targets]
    ok = [p for p in parsed if p is not None]
    fmt.coverage = len(ok) / len(targets) if targets else 0.0
    fmt.label_fields = [
        f
        for f in fmt.fields
        if _is_categorical(vals := [p[f] for p in ok if f in p])
        # JSON objects and lists inside an answer are structure, not labels
        and not (fmt.kind == "json" and any(v[:1] in ("{", "[") for v in vals))
    ]
    fmt.labels = {f: sorted({p[f] for p in ok if f in p}) for f in fmt.label_fields}


def infer_format(targets: Sequence[str]) -> OutputFormat:
    """The dominant output shape of ``targets`` (the final assistant turns)."""
    n = len(targets)
    if n == 0:
        return OutputFormat(kind="text", pattern="free text", coverage=0.0)

    # Outputs repeat (labels!): look at each distinct one once, weighted by its count.
    distinct = Counter(targets)

    # 1. `Key: value` lines with the same keys in the same order.
    sigs: Counter[tuple[str, ...]] = Counter()
    for t, c in distinct.items():
        fl = _field_lines(t)
        if fl is not None:
            sigs[tuple(k for k, _ in fl)] += c
    if sigs:
        keys, count = sigs.most_common(1)[0]
        if count >= MIN_SHARE * n and len({_slug(k) for k in keys}) == len(keys):
            spaced = sum(c for t, c in distinct.items() if re.search(r"^[^\n:]+: \S", t.strip()))
            sep = ": " if spaced >= 0.95 * count else r":\s*"
            regex = "^" + r"\n".join(f"{re.escape(k)}{sep}(?P<{_slug(k)}>.+)" for k in keys) + "$"
            pattern = "\n".join(f"{k}: <{_slug(k)}>" for k in keys)
            fmt = OutputFormat(
                kind="fields", pattern=pattern, regex=regex, fields=[_slug(k) for k in keys]
            )
            _fill_labels(fmt, targets)
            return fmt

    # 2. JSON objects with the same keys.
    jsigs: Counter[tuple[str, ...]] = Counter()
    for t, c in distinct.items():
        obj = _json_object(t)
        if obj is not None:
            jsigs[tuple(sorted(obj))] += c
    if jsigs:
        keys, count = jsigs.most_common(1)[0]
        if count >= MIN_SHARE * n:
            pattern = "{" + ", ".join(f'"{k}": <{k}>' for k in keys) + "}"
            fmt = OutputFormat(kind="json", pattern=pattern, fields=list(keys))
            _fill_labels(fmt, targets)
            return fmt

    # 3. A short single-line label.
    short = [
        t.strip() for t in targets if "\n" not in t.strip() and len(t.strip()) <= LABEL_MAX_CHARS
    ]
    if len(short) >= MIN_SHARE * n and _is_categorical(short):
        regex = rf"^(?P<label>[^\n]{{1,{LABEL_MAX_CHARS}}})$"
        fmt = OutputFormat(
            kind="label", pattern="<label>", regex=regex, fields=["label"], label_fields=["label"]
        )
        _fill_labels(fmt, targets)
        # Categorical by construction (checked on the short ones above), even when a few are long.
        fmt.label_fields = ["label"]
        fmt.labels = {"label": sorted({p["label"] for p in map(fmt.parse, targets) if p})}
        return fmt

    return OutputFormat(kind="text", pattern="free text")


def infer_labels(
    targets: Sequence[str], output_pattern: str | None = None
) -> tuple[OutputFormat, list[dict[str, str] | None]]:
    """The format and each target's label fields (None for outliers or when there are no labels).

    ``output_pattern`` (a regex with named groups, ``task.output_pattern``) overrides inference.
    """
    fmt = (
        OutputFormat.from_regex(output_pattern, targets)
        if output_pattern
        else infer_format(targets)
    )
    return fmt, [fmt.label_of(t) for t in targets]
