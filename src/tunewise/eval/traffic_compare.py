"""Champion and challenger on live traffic: ``tunewise compare-traffic DIR [--labels FILE]``.

The inputs are the traffic log's records (``tunewise serve --log-traffic DIR --shadow ...``):
the production records (``traffic-*.jsonl``, one per answered request, ``id``) and the shadow
challenger's (``shadow-*.jsonl``, ``shadow_of`` = the production record's ``id``). This module
reads them as plain dicts, each with the file and line it came from (the serving layer sits above
this one and owns the files: :func:`tunewise.serve.traffic.iter_traffic`), so an error names
``file:line: field``.

* **Agreement**, on every request both answered: the same text (exact, as generated), and, where
  either answer made calls, the same calls: the same multiset of function name + arguments as
  JSON values (:meth:`~tunewise.runtime.tool_calls.ToolCall.key`; call ids are random and key
  order is ignored, as the ``tools`` graders compare calls). A pair *agrees* on its calls when
  either side called, else on its text.
* **The paired metric**, on the requests that gained a label (``--labels``: tunewise JSONL lines
  whose ``origin.traffic_id`` names a production record; the label is the last assistant turn):
  both answers are scored against the label (the project's graders with ``--project``, else
  exact match after whitespace collapsing) and the two candidates, ``production`` and
  ``shadow``, go through :func:`tunewise.eval.stats.compare`, the statistics of
  ``tunewise compare``: CIs over items by the bootstrap, exact McNemar for 0/1 metrics, the
  minimum detectable difference.
* **Groups**: a log may span an alias move; pairs are grouped by (production version, shadow
  version) and each group is reported and tested on its own, never mixed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewise.data.labels import normalise
from tunewise.data.schema import Example, parse_jsonl
from tunewise.errors import DataError
from tunewise.eval.graders import Grader
from tunewise.eval.results import CandidateResult, Comparison, EvalRun, ItemResult
from tunewise.eval.stats import MACRO_F1, CiMethod, compare
from tunewise.fsio import sha256_json
from tunewise.runtime.tool_calls import call_from_openai

__all__ = [
    "Label",
    "Pair",
    "Pairing",
    "StatSettings",
    "TrafficComparison",
    "compare_traffic",
    "load_labels",
    "pair_records",
]

Located = tuple[Path, int, dict[str, Any]]  # (file, line, record), as iter_traffic yields them
EXACT = "exact_match"
LABELLERS = ("human", "teacher:")  # origin.labelled_by: "human" or "teacher:<model>"


@dataclass
class Answer:
    key: str  # the version (or adapter, or base model) that answered: resolved.key
    text: str
    calls: list[str]  # sorted ToolCall.key() of its tool_calls; empty: no call


@dataclass
class Pair:
    id: str  # the production record's id
    production: Answer
    shadow: Answer

    @property
    def text_agree(self) -> bool:
        return self.production.text == self.shadow.text

    @property
    def with_calls(self) -> bool:
        return bool(self.production.calls or self.shadow.calls)

    @property
    def agree(self) -> bool:
        return self.production.calls == self.shadow.calls if self.with_calls else self.text_agree


@dataclass
class Label:
    example: Example  # the prompt turns and the labelled answer (its last assistant turn)
    labelled_by: str | None


# --------------------------------------------------------------------------- reading


def _bad(where: Located, fld: str, message: str) -> DataError:
    return DataError(str(where[0]), where[1], fld, message)


def _text(where: Located, fld: str) -> str:
    value = where[2].get(fld)
    if not isinstance(value, str):
        raise _bad(where, fld, f"expected a string, got {type(value).__name__}")
    return value


def _answer(where: Located) -> Answer:
    rec = where[2]
    resolved = rec.get("resolved")
    if not isinstance(resolved, dict) or not isinstance(resolved.get("key"), str):
        raise _bad(where, "resolved.key", "expected a string (the version that answered)")
    raw = rec.get("tool_calls") or []
    if not isinstance(raw, list):
        raise _bad(where, "tool_calls", f"expected a list, got {type(raw).__name__}")
    calls = []
    for i, entry in enumerate(raw):
        try:
            calls.append(call_from_openai(entry).key())
        except ValueError as exc:
            raise _bad(where, f"tool_calls[{i}]", str(exc)) from None
    return Answer(resolved["key"], _text(where, "answer"), sorted(calls))


@dataclass
class Pairing:
    """Production and shadow answers to the same requests, in request order, and the counts:
    requests, paired, shadow_failed (the challenger could not answer), unshadowed (no shadow
    answer: not sampled, dropped, or still queued at a kill), orphan_shadows (no production
    record: deleted by retention, or written after the last production file closed)."""

    pairs: list[Pair]
    counts: dict[str, int]
    request_ids: set[str]


def pair_records(requests: Iterable[Located], shadows: Iterable[Located]) -> Pairing:
    """The :class:`Pairing` of production records and shadow records (``shadow_of``)."""
    by_id: dict[str, Located] = {}
    for where in requests:
        rid = _text(where, "id")
        if rid in by_id:
            first = by_id[rid]
            raise _bad(where, "id", f"duplicate of {first[0]}:{first[1]}")
        by_id[rid] = where
    answers: dict[str, Located] = {}
    failed = orphans = 0
    for where in shadows:
        of = _text(where, "shadow_of")
        if of in answers:
            first = answers[of]
            raise _bad(where, "shadow_of", f"a second answer to {of} ({first[0]}:{first[1]})")
        if of not in by_id:
            orphans += 1
        elif "error" in where[2]:
            failed += 1
        else:
            answers[of] = where
    pairs = [
        Pair(rid, _answer(w), _answer(answers[rid])) for rid, w in by_id.items() if rid in answers
    ]
    counts = {
        "requests": len(by_id),
        "paired": len(pairs),
        "shadow_failed": failed,
        "unshadowed": len(by_id) - len(pairs) - failed,
        "orphan_shadows": orphans,
    }
    return Pairing(pairs, counts, set(by_id))


def load_labels(path: str | Path, tools: list[dict[str, Any]] | None = None) -> dict[str, Label]:
    """traffic id -> label, from tunewise JSONL whose lines carry ``origin.traffic_id``; any bad
    line is a :class:`DataError` naming ``file:line: field``."""
    examples, problems = parse_jsonl(path, tools)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(first.path, first.line, first.field, first.message + more)
    labels: dict[str, Label] = {}
    lines: dict[str, int] = {}
    for ex in examples:
        origin = ex.meta.get("origin")
        if not isinstance(origin, dict):
            raise DataError(str(path), ex.line, "origin", "missing: {traffic_id, labelled_by}")
        tid = origin.get("traffic_id")
        if not isinstance(tid, str) or not tid.strip():
            raise DataError(str(path), ex.line, "origin.traffic_id", "expected a record id")
        if tid in labels:
            raise DataError(
                str(path), ex.line, "origin.traffic_id", f"{tid} labelled twice (line {lines[tid]})"
            )
        by = origin.get("labelled_by")
        if by is not None and not (by == "human" or str(by).startswith("teacher:")):
            raise DataError(
                str(path),
                ex.line,
                "origin.labelled_by",
                f"'human' or 'teacher:<model>', not {by!r}",
            )
        if tools:
            ex = ex.with_tools(tools)
        labels[tid], lines[tid] = Label(ex, by), ex.line
    return labels


# --------------------------------------------------------------------------- comparing


@dataclass
class Group:
    """The pairs of one (production version, shadow version), and their paired metric."""

    production: str
    shadow: str
    pairs: list[Pair]
    labelled: int = 0
    comparison: Comparison | None = None

    def to_dict(self) -> dict[str, Any]:
        n, calls = len(self.pairs), [p for p in self.pairs if p.with_calls]
        agree = sum(p.agree for p in self.pairs)
        text = sum(p.text_agree for p in self.pairs)
        return {
            "production": self.production,
            "shadow": self.shadow,
            "pairs": n,
            "agree": agree,
            "agreement": agree / n if n else None,
            "text_agree": text,
            "text_agreement": text / n if n else None,
            "with_calls": len(calls),
            "calls_agree": sum(p.agree for p in calls),
            "call_agreement": sum(p.agree for p in calls) / len(calls) if calls else None,
            "disagreeing_ids": [p.id for p in self.pairs if not p.agree],
            "labelled": self.labelled,
            "comparison": self.comparison.to_dict() if self.comparison else None,
        }


@dataclass
class TrafficComparison:
    counts: dict[str, int]
    groups: list[Group]
    primary_metric: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "primary_metric": self.primary_metric,
            "groups": [g.to_dict() for g in self.groups],
            "notes": self.notes,
        }


@dataclass
class StatSettings:
    """What ``tunewise compare`` takes: the significance level and the bootstrap's settings."""

    alpha: float = 0.05
    n_boot: int = 2000
    seed: int = 0
    ci_method: CiMethod = "bca"


def _scored(text: str, label: Label, grader: Grader | None) -> ItemResult:
    exact = float(normalise(text) == normalise(label.example.target))
    if grader is None:
        return ItemResult(item_id="", output=text, scores={EXACT: exact})
    scores, gold, pred, _ = grader.grade(text, label.example)
    return ItemResult("", text, {EXACT: exact, **scores}, gold, pred)


def _paired_metric(
    group: Group,
    labels: dict[str, Label],
    grader: Grader | None,
    primary: str,
    stats: StatSettings,
    project: str,
) -> Comparison | None:
    """Production and shadow scored on the group's labelled requests, compared as
    ``tunewise compare`` compares candidates (the shadow against production)."""
    labelled = [p for p in group.pairs if p.id in labels]
    group.labelled = len(labelled)
    if not labelled:
        return None
    cands = []
    for side in ("production", "shadow"):
        items = []
        for p in labelled:
            item = _scored(getattr(p, side).text, labels[p.id], grader)
            item.item_id = p.id
            items.append(item)
        cands.append(CandidateResult(name=side, kind=side, items=items))
    ids = [p.id for p in labelled]
    run = EvalRun(project, "traffic", sha256_json(ids)[:16], primary, ids, cands)
    return compare(
        run,
        baselines=["production"],
        pairs=[("shadow", "production")],
        alpha=stats.alpha,
        n_boot=stats.n_boot,
        seed=stats.seed,
        ci_method=stats.ci_method,
    )


def _groups(pairs: list[Pair]) -> list[Group]:
    found: dict[tuple[str, str], Group] = {}
    for p in pairs:
        key = (p.production.key, p.shadow.key)
        found.setdefault(key, Group(*key, pairs=[])).pairs.append(p)
    return sorted(found.values(), key=lambda g: -len(g.pairs))


def compare_traffic(
    requests: Iterable[Located],
    shadows: Iterable[Located],
    labels: dict[str, Label] | None = None,
    *,
    grader: Grader | None = None,
    primary_metric: str | None = None,
    project: str = "traffic",
    stats: StatSettings | None = None,
) -> TrafficComparison:
    """Agreement per group of pairs and, with ``labels``, the paired metric (module docstring).

    ``primary_metric`` (the project's) must be one the graders score here (no LLM judge runs);
    else exact match is the metric, and a note says so.
    """
    stats = stats or StatSettings()
    pairing = pair_records(requests, shadows)
    pairs, counts = pairing.pairs, pairing.counts
    labels = labels or {}
    notes: list[str] = []
    primary = primary_metric or EXACT
    if labels and grader is not None and primary != EXACT:
        first = next(iter(labels.values()))
        item = _scored(first.example.target, first, grader)
        derived = primary == MACRO_F1 and item.gold is not None  # from the labels, by compare
        if primary not in item.scores and not derived:
            notes.append(f"{primary} is not scored on traffic (no judge runs here): {EXACT}")
            primary = EXACT
    paired_ids = {p.id for p in pairs}
    counts["labels"] = len(labels)
    counts["labels_paired"] = sum(tid in paired_ids for tid in labels)
    counts["labels_without_request"] = sum(tid not in pairing.request_ids for tid in labels)
    counts["labels_without_shadow"] = (
        counts["labels"] - counts["labels_paired"] - counts["labels_without_request"]
    )
    groups = _groups(pairs)
    for g in groups:
        g.comparison = _paired_metric(g, labels, grader, primary, stats, project)
    if not counts["paired"]:
        notes.append("no request has both answers: was the server started with --shadow?")
    return TrafficComparison(counts, groups, primary, notes)
