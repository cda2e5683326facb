"""The data that flows from the harness to statistics, the gate, the report and the registry.

The harness produces an :class:`EvalRun` (every candidate scored on the same items); statistics
turn it into a :class:`Comparison`; the gate turns that into a :class:`Verdict`; the registry
keeps an :class:`EvalSummary` of the run beside each version. All are plain dataclasses saved as
JSON, so each stage can be rerun or tested alone.

This module is the one place where those files are written and read back: every stage loads
them through ``load`` here, which turns a missing or damaged file into a one-line
:class:`~tunewise.errors.UserError` naming the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from tunewise.config.gate import GateConfig
from tunewise.errors import UserError
from tunewise.fsio import atomic_write_json

# Metrics defined only on some items (NaN elsewhere by design, not unparsed answers): the graders
# write them, the report leaves them out of its "unparsed" note.
WHERE_APPLICABLE = ("refusal_recall", "refusal_precision")

EVAL_FILE = "eval.json"
COMPARISON_FILE = "comparison.json"
VERDICT_FILE = "verdict.json"

_T = TypeVar("_T")
_A = TypeVar("_A", bound="_JsonFile")


def _load(path: str | Path, parse: Callable[[Any], _T], what: str, missing: str) -> _T:
    """``parse`` of the JSON in ``path``; a missing or malformed file is a UserError."""
    path = Path(path)
    try:
        return parse(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise UserError(f"{path}: not found ({missing})") from None
    except RecursionError:  # JSON nested past Python's stack
        raise UserError(f"{path}: not a valid {what} file: nested too deeply") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: not a valid {what} file: {exc}") from None


class _JsonFile:
    """Save and load for an artefact kept as one JSON file; subclasses say what it is."""

    WHAT: ClassVar[str]  # "evaluation", "comparison", ...: named in error messages

    @staticmethod
    def missing_hint(path: Path) -> str:
        """What to run when the file is not there."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_A], raw: dict[str, Any]) -> _A:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls: type[_A], path: str | Path) -> _A:
        path = Path(path)
        return _load(path, cls.from_dict, cls.WHAT, cls.missing_hint(path))


def _clean(obj: Any) -> Any:
    # JSON has no NaN; browsers and jq reject it. null means "not defined".
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


_JSON_NAMES = {int: "number", float: "number", str: "string", dict: "JSON object", list: "list"}


def _typed(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    """``value`` when it is a ``kind``; else a ValueError naming ``where`` (``_load`` makes it
    one line naming the file). A number written as a string passes ``float()`` in one stage and
    fails as a string in the next: it is refused where the file is read."""
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _types(kind)):
        names = " or ".join(dict.fromkeys(_JSON_NAMES.get(t, t.__name__) for t in _types(kind)))
        raise ValueError(f"{where}: expected a {names}, got {json.dumps(value, default=repr)[:60]}")
    return value


def _types(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _score(value: Any, where: str) -> float | None:
    """A per-item score: a number (NaN is JSON's NaN), or null where the metric is undefined."""
    if value is None:
        return None
    return float(_typed(value, (int, float), where))


def _item(raw: Any, where: str) -> ItemResult:
    raw = _typed(raw, dict, where)
    scores = _typed(raw.get("scores"), dict, f"{where}.scores")
    for key in ("gold", "predicted"):
        if raw.get(key) is not None:
            _typed(raw[key], str, f"{where}.{key}")
    return ItemResult(
        **{
            **raw,
            "item_id": _typed(raw.get("item_id"), str, f"{where}.item_id"),
            "output": _typed(raw.get("output"), str, f"{where}.output"),
            "scores": {m: _score(v, f"{where}.scores.{m}") for m, v in scores.items()},
            "meta": _typed(raw.get("meta", {}), dict, f"{where}.meta"),
        }
    )


def _candidate(raw: Any, where: str) -> CandidateResult:
    raw = _typed(raw, dict, where)
    items = _typed(raw.get("items"), list, f"{where}.items")
    return CandidateResult(
        name=_typed(raw.get("name"), str, f"{where}.name"),
        kind=_typed(raw.get("kind"), str, f"{where}.kind"),
        meta=_typed(raw.get("meta", {}), dict, f"{where}.meta"),
        items=[_item(it, f"{where}.items[{j}]") for j, it in enumerate(items)],
    )


# ----------------------------------------------------------------------------- evaluation
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

    def metrics(self) -> list[str]:
        """Every metric scored on at least one item, in first-seen order."""
        return list(dict.fromkeys(m for it in self.items for m in it.scores))

    def mean(self, metric: str) -> tuple[float | None, int]:
        """(mean over the items with a number, items whose score is NaN); None when none has one.

        A judge reply that could not be parsed is NaN: it is counted, not averaged in.
        """
        values = [v for it in self.items if (v := it.scores.get(metric)) is not None]
        scored = [float(v) for v in values if not math.isnan(v)]
        mean = sum(scored) / len(scored) if scored else None
        return mean, len(values) - len(scored)

    def means(self) -> dict[str, float]:
        """Metric -> mean over the items that have a number for it."""
        out = {}
        for metric in self.metrics():
            mean, _ = self.mean(metric)
            if mean is not None:
                out[metric] = mean
        return out


@dataclass
class EvalRun(_JsonFile):
    WHAT: ClassVar[str] = "evaluation"

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

    def summary(self) -> EvalSummary:
        return EvalSummary(
            project=self.project,
            split=self.split,
            split_hash=self.split_hash,
            primary_metric=self.primary_metric,
            n_items=len(self.item_ids),
            means={c.name: c.means() for c in self.candidates},
        )

    @staticmethod
    def missing_hint(path: Path) -> str:
        return "run `tunewise eval` to create it"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EvalRun:
        raw = dict(_typed(raw, dict, "top level"))
        found = _typed(raw.pop("candidates", None), list, "candidates")
        cands = [_candidate(c, f"candidates[{i}]") for i, c in enumerate(found)]
        for key in ("project", "split", "split_hash", "primary_metric"):
            _typed(raw.get(key), str, key)
        ids = _typed(raw.get("item_ids"), list, "item_ids")
        for i, item_id in enumerate(ids):
            _typed(item_id, str, f"item_ids[{i}]")
        _typed(raw.get("meta", {}), dict, "meta")
        return cls(candidates=cands, **raw)


@dataclass
class EvalSummary:
    """What the registry keeps of an evaluation: what was measured on which split, and the means."""

    project: str | None
    split: str | None
    split_hash: str | None
    primary_metric: str | None
    n_items: int
    means: dict[str, dict[str, float]]  # candidate -> metric -> mean over scored items

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EvalSummary:
        return cls(
            project=raw.get("project"),
            split=raw.get("split"),
            split_hash=raw.get("split_hash"),
            primary_metric=raw.get("primary_metric"),
            n_items=int(raw.get("n_items", 0)),
            means={c: {m: float(v) for m, v in per.items()} for c, per in raw["means"].items()},
        )


# ----------------------------------------------------------------------------- comparison
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


# PairedTest fields that may be NaN (saved as null)
_FLOAT_FIELDS = ("candidate_value", "baseline_value", "diff", "ci_low", "ci_high", "p_value")


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
    test: str  # "tango-score-cc" | "paired-t" | "no-difference"
    n: int
    wins: int | None = None  # 0/1 metrics: items only the candidate got right
    losses: int | None = None  # ... and only the reference got right
    same_outputs: int | None = None  # items both answered with the very same text
    reference_kind: str | None = None  # "external" (priced per token), "finetuned", ...


# MarginTest fields that may be NaN (saved as null)
_MARGIN_FLOATS = ("candidate_value", "reference_value", "diff", "lower_bound", "p_value")


@dataclass
class Comparison(_JsonFile):
    WHAT: ClassVar[str] = "comparison"

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

    def items_needed(self, pair: PairedTest) -> int | None:
        """Items that would detect ``pair``'s difference, when the pair was underpowered."""
        for w in self.meta.get("underpowered", []):
            if (w["candidate"], w["baseline"], w["metric"]) == (
                pair.candidate,
                pair.baseline,
                pair.metric,
            ):
                return w.get("items_needed")
        return None

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Comparison:
        metrics = {
            cand: {
                m: MetricEstimate(
                    value=_num(e["value"]),
                    ci_low=_num(e["ci_low"]),
                    ci_high=_num(e["ci_high"]),
                    n=int(e["n"]),
                )
                for m, e in per.items()
            }
            for cand, per in raw["metrics"].items()
        }
        pairs = []
        for p in raw["pairs"]:
            p = dict(p)
            for key in _FLOAT_FIELDS:
                p[key] = _num(p.get(key))
            pairs.append(PairedTest(**p))
        margin_tests = []
        for t in raw.get("margin_tests", []):
            t = dict(t)
            for key in _MARGIN_FLOATS:
                t[key] = _num(t.get(key))
            margin_tests.append(MarginTest(**t))
        return cls(
            primary_metric=raw["primary_metric"],
            metrics=metrics,
            pairs=pairs,
            meta=raw.get("meta", {}),
            margin_tests=margin_tests,
        )

    @staticmethod
    def missing_hint(path: Path) -> str:
        return f"run `tunewise compare {path.parent}` first"


# ----------------------------------------------------------------------------- verdict
@dataclass
class BaselineReason:
    baseline: str
    passed: bool
    reason: str


@dataclass
class Verdict(_JsonFile):
    WHAT: ClassVar[str] = "verdict"

    candidate: str
    ship: bool
    reasons: list[BaselineReason]
    guard_failures: list[str]
    summary: str
    # The regression check against the production version ({"version": "name:3", "passed": ...,
    # "reason": ...}); None when the project had no production version. `registry promote` reads it.
    champion: dict[str, Any] | None = None
    # The gate settings that produced it, as saved beside it (None when not recorded). Not part
    # of the decision, so two verdicts that decide the same compare equal.
    gate: dict[str, Any] | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("champion", "gate"):
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Verdict:
        gate = raw.get("gate")
        return cls(
            candidate=raw["candidate"],
            ship=bool(raw["ship"]),
            reasons=[BaselineReason(**r) for r in raw["reasons"]],
            guard_failures=list(raw["guard_failures"]),
            summary=raw["summary"],
            champion=raw.get("champion") if isinstance(raw.get("champion"), dict) else None,
            gate=gate if isinstance(gate, dict) else None,
        )

    @staticmethod
    def missing_hint(path: Path) -> str:
        return f"run `tunewise gate {path.parent} --candidate NAME`"


def gate_config_from_meta(meta: dict[str, Any]) -> GateConfig:
    """The project's gate settings as recorded in eval.json's meta, else the defaults."""
    raw = meta.get("gate")
    if raw is None and isinstance(meta.get("config"), dict):
        raw = meta["config"].get("gate")
    if not isinstance(raw, dict):
        return GateConfig()
    try:
        return GateConfig.model_validate(raw)
    except ValueError as exc:
        raise UserError(f"eval.json: meta.gate is not a valid gate section: {exc}") from None
