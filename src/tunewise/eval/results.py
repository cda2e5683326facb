"""The data that flows from the harness to statistics, the gate and the report.

The harness produces an :class:`EvalRun` (every candidate scored on the same items); statistics
turn it into a :class:`Comparison`; the gate turns that into a :class:`Verdict`. All three are
plain dataclasses saved as JSON, so each stage can be rerun or tested alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunewise.fsio import atomic_write_json


@dataclass
class ItemResult:
    """One candidate's answer to one item, with its per-item scores.

    ``scores`` keys are metric names and each metric is the mean of its per-item values:
    ``accuracy`` (0/1), ``exact_match`` (0/1), ``format_compliance`` (0/1), ``json_valid``,
    ``schema_valid``, ``judge`` (rubric score normalised to [0, 1], NaN when the judge's reply
    could not be parsed), per-field ``accuracy_<field>``. ``macro_f1`` is derived from labels.
    ``gold`` and ``predicted`` are the extracted labels (for F1 and confusion matrices).
    """

    item_id: str
    output: str
    scores: dict[str, float]
    gold: str | None = None
    predicted: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class CandidateResult:
    name: str  # e.g. "prompt", "fewshot", "rag", "finetuned", "finetuned-qlora", "constrained"
    kind: str  # "prompt" | "fewshot" | "rag" | "finetuned" | "external" | "constrained"
    items: list[ItemResult]
    meta: dict[str, Any] = field(default_factory=dict)  # model/adapter hash, prompt hash, timings


@dataclass
class EvalRun:
    project: str
    split: str  # "val" or "test"
    split_hash: str
    primary_metric: str
    item_ids: list[str]
    candidates: list[CandidateResult]
    meta: dict[str, Any] = field(default_factory=dict)

    def candidate(self, name: str) -> CandidateResult:
        for c in self.candidates:
            if c.name == name:
                return c
        raise KeyError(name)

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> EvalRun:
        raw = json.loads(Path(path).read_text())
        cands = [
            CandidateResult(
                name=c["name"],
                kind=c["kind"],
                meta=c.get("meta", {}),
                items=[ItemResult(**i) for i in c["items"]],
            )
            for c in raw.pop("candidates")
        ]
        return cls(candidates=cands, **raw)


@dataclass
class MetricEstimate:
    value: float
    ci_low: float
    ci_high: float
    n: int


@dataclass
class PairedTest:
    """Candidate minus baseline on the same items."""

    candidate: str
    baseline: str
    metric: str
    candidate_value: float
    baseline_value: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str  # "mcnemar-exact" | "paired-bootstrap"
    n: int
    # smallest difference this many items could detect at alpha with 80% power (None if unknown)
    min_detectable_diff: float | None = None
    underpowered: bool = False


@dataclass
class MarginTest:
    """One-sided paired test of H0: candidate - reference <= -margin (see eval/margin.py)."""

    candidate: str
    reference: str
    metric: str
    margin: float
    alpha: float
    candidate_value: float
    reference_value: float
    diff: float
    lower_bound: float  # one-sided (1 - alpha) confidence bound on the difference
    p_value: float  # one-sided; < alpha means "not worse by the margin"
    test: str  # "tango-score-cc" | "paired-t"
    n: int
    wins: int | None = None  # 0/1 metrics: items only the candidate got right
    losses: int | None = None  # ... and only the reference got right
    reference_kind: str | None = None  # "external" (priced per token), "finetuned", ...


@dataclass
class Comparison:
    primary_metric: str
    metrics: dict[str, dict[str, MetricEstimate]]  # candidate -> metric -> estimate
    pairs: list[PairedTest]
    meta: dict[str, Any] = field(default_factory=dict)
    # non-inferiority and regression tests, against gate.reference or the production version
    margin_tests: list[MarginTest] = field(default_factory=list)

    def margin_test(self, candidate: str, reference: str) -> MarginTest | None:
        for t in self.margin_tests:
            if (t.candidate, t.reference) == (candidate, reference):
                return t
        return None

    def pair(self, candidate: str, baseline: str, metric: str) -> PairedTest | None:
        for p in self.pairs:
            if (p.candidate, p.baseline, p.metric) == (candidate, baseline, metric):
                return p
        return None


@dataclass
class BaselineReason:
    baseline: str
    passed: bool
    reason: str


@dataclass
class Verdict:
    candidate: str
    ship: bool
    reasons: list[BaselineReason]
    guard_failures: list[str]
    summary: str
    # the regression check against the production version ({"version": "name:3", "passed": ...,
    # "reason": ...}); None when the project had no production version. `registry promote` reads it.
    champion: dict[str, Any] | None = None
