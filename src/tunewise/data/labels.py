"""How a task's answers carry labels: :class:`LabelSpec`, read from ``task.output_pattern``.

The pattern's named groups are the label fields (``(?P<category>...)``); without a pattern, or
with one that has no named group, the whole answer is the one field :data:`SINGLE_FIELD`. Values
compare after whitespace collapsing and case folding (:func:`fold`), so "Billing" is "billing".

Grading (:mod:`tunewise.eval.graders`), the classical baselines and constrained scoring all read
labels this way; it lives in the data layer so that every one of them can import it downward.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from tunewise.config import ProjectConfig
from tunewise.data.schema import Example
from tunewise.errors import UserError

SINGLE_FIELD = "label"  # the field name when output_pattern has no named groups


def normalise(text: str) -> str:
    """Whitespace-collapsed text, for exact match."""
    return " ".join(text.split())


def fold(value: str) -> str:
    """Whitespace-collapsed and case-folded: how label values and slot values compare."""
    return normalise(value).casefold()


@dataclass
class LabelSpec:
    """How to read label fields out of an answer, and which values each field allows."""

    pattern: re.Pattern[str] | None
    fields: list[str]
    labels: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: ProjectConfig, train: Sequence[Example] = ()) -> LabelSpec:
        """From ``task.output_pattern`` and ``task.labels`` (inferred from train when absent)."""
        pattern = compile_pattern(cfg.task.output_pattern)
        fields = (
            list(pattern.groupindex)
            if pattern is not None and pattern.groupindex
            else [SINGLE_FIELD]
        )
        spec = cls(pattern=pattern, fields=fields)
        if cfg.task.labels:
            unknown = [f for f in cfg.task.labels if f not in fields]
            if unknown and fields != [SINGLE_FIELD]:
                raise UserError(
                    f"task.labels: field {unknown[0]!r} is not a named group of "
                    f"task.output_pattern (groups: {', '.join(fields)})"
                )
            spec.labels = {f: list(v) for f, v in cfg.task.labels.items()}
            if (
                fields == [SINGLE_FIELD]
                and len(cfg.task.labels) == 1
                and SINGLE_FIELD not in cfg.task.labels
            ):
                # One labels list and no named group: that list is the whole-answer label set.
                spec.labels = {SINGLE_FIELD: list(next(iter(cfg.task.labels.values())))}
        else:
            spec.labels = spec.infer_labels(train)
        return spec

    def extract(self, text: str) -> dict[str, str] | None:
        """The label fields in ``text``, or None when it does not parse.

        A full match of the pattern is tried first, then a search, so an answer with a trailing
        remark still yields its labels (format compliance is graded separately, strictly).
        """
        text = text.strip()
        if self.pattern is None:
            return {SINGLE_FIELD: normalise(text)} if text else None
        m = self.pattern.fullmatch(text) or self.pattern.search(text)
        if m is None:
            return None
        if not self.pattern.groupindex:
            return {SINGLE_FIELD: normalise(m.group(0))}
        out = {}
        for f in self.fields:
            v = m.group(f)
            if v is None:
                return None
            out[f] = normalise(v)
        return out

    def canonical(self, fields: dict[str, str]) -> dict[str, str]:
        """Map case/space variants onto the allowed spelling ("BILLING " -> "billing")."""
        out = {}
        for f, v in fields.items():
            allowed = {fold(a): a for a in self.labels.get(f, [])}
            out[f] = allowed.get(fold(v), v)
        return out

    def key(self, fields: dict[str, str] | None) -> str | None:
        """One string per label combination, for F1 and confusion matrices (None: unparseable)."""
        if fields is None:
            return None
        if self.fields == [SINGLE_FIELD]:
            return fields[SINGLE_FIELD]
        return " | ".join(fields[f] for f in self.fields)

    def infer_labels(self, examples: Sequence[Example]) -> dict[str, list[str]]:
        seen: dict[str, set[str]] = {f: set() for f in self.fields}
        for ex in examples:
            got = self.extract(ex.target)
            if got:
                for f, v in got.items():
                    seen[f].add(v)
        return {f: sorted(v) for f, v in seen.items()}

    def complies(self, text: str) -> bool:
        """Strict format check: the whole answer matches, and every field holds an allowed value."""
        text = text.strip()
        if self.pattern is not None:
            m = self.pattern.fullmatch(text)
            if m is None:
                return False
            got = (
                {f: normalise(m.group(f) or "") for f in self.fields}
                if self.pattern.groupindex
                else {SINGLE_FIELD: normalise(text)}
            )
        else:
            got = {SINGLE_FIELD: normalise(text)}
        for f, v in got.items():
            allowed = self.labels.get(f)
            if allowed and fold(v) not in {fold(a) for a in allowed}:
                return False
        return True


def compile_pattern(pattern: str | None) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        # MULTILINE so a pattern written per line ("^Category: ...$\n^Priority: ...$") also searches
        # inside a longer answer; fullmatch is unaffected.
        return re.compile(pattern, re.MULTILINE)
    except re.error as exc:
        raise UserError(f"task.output_pattern: invalid regex: {exc}") from None
