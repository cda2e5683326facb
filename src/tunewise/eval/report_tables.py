"""The parts both sections of the report build (validation and the sealed test): what a report
was drawn from (:class:`ReportInputs`), the order it shows candidates and metrics in, the metric and
paired-test rows, and Markdown escaping. Nothing here decides: verdicts arrive in the inputs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewise.config.eval import TOOL_ERROR_RATES
from tunewise.config.gate import GateConfig
from tunewise.eval.results import VERDICT_FILE, Comparison, EvalRun, PairedTest, Verdict
from tunewise.numbers import cell, p_cell, signed_cell

_TRUNC = 600
LOWER_IS_BETTER = frozenset(TOOL_ERROR_RATES)  # rates of mistakes: the best is the lowest


@dataclass
class ReportInputs:
    """One evaluation as the report shows it. ``verdicts`` are the saved ones, or, where none
    was saved for this evaluation, the gate's provisional ones (``provisional``)."""

    eval_dir: Path
    run: EvalRun
    comp: Comparison
    gate_cfg: GateConfig
    verdicts: list[Verdict]
    provisional: bool


def saved_verdicts(eval_dir: Path) -> list[Verdict]:
    """verdict.json (the decision of record) and every verdict-<candidate>.json: the ladder
    leaves one per fine-tune, and the reader wants to see why the others lost too."""
    files = [eval_dir / VERDICT_FILE, *sorted(eval_dir.glob("verdict-*.json"))]
    found: dict[str, Verdict] = {}
    for f in files:
        if f.is_file():
            v = Verdict.load(f)
            found.setdefault(v.candidate, v)
    return list(found.values())


def md_escape(text: Any, limit: int | None = None) -> str:
    """Text safe inside a Markdown table cell: no raw HTML, no table or emphasis syntax."""
    s = str(text)
    if limit is not None and len(s) > limit:
        s = s[:limit] + "…"
    s = s.replace("\\", "\\\\")
    s = re.sub(r"([`*_\[\]|~])", r"\\\1", s)
    s = s.replace("<", "&lt;").replace("\r", " ").replace("\n", " ⏎ ")
    return s


def interval(low: float | None, high: float | None) -> str:
    return f"{cell(low)}–{cell(high)}"


def value_of(comp: Comparison, name: str, metric: str) -> float:
    """The estimate of ``metric`` for ``name``; NaN when it was not measured."""
    e = comp.metrics[name].get(metric)
    return e.value if e is not None else math.nan


def metric_rows(
    comp: Comparison,
    names: list[str],
    metrics: list[str],
    baselines: list[str],
    colors: dict[str, str],
) -> list[dict[str, Any]]:
    """One row per candidate, one cell per metric; the best value of each metric marked (the
    lowest for an error rate such as ``wrong_call``, the highest for every other metric)."""
    table = [
        {
            "name": n,
            "is_baseline": n in baselines,
            "color": colors[n],
            "cells": [
                {
                    "value": cell(e.value),
                    "ci": interval(e.ci_low, e.ci_high),
                    "n": e.n,
                    "best": False,
                }
                if (e := comp.metrics[n].get(m))
                else None
                for m in metrics
            ],
        }
        for n in names
    ]
    for j, m in enumerate(metrics):  # bold the best value per metric
        vals = [(value_of(comp, n, m), i) for i, n in enumerate(names)]
        vals = [(v, i) for v, i in vals if math.isfinite(v)]
        if vals:
            top = (min if m in LOWER_IS_BETTER else max)(v for v, _ in vals)
            for v, i in vals:
                if v == top:
                    table[i]["cells"][j]["best"] = True
    return table


def significant(comp: Comparison, p: PairedTest) -> bool:
    return math.isfinite(p.p_value) and p.p_value < comp.meta.get("alpha", 0.05)


def pair_rows(comp: Comparison) -> list[dict[str, Any]]:
    """The paired tests, primary metric first, formatted for the tables."""
    primary = comp.primary_metric
    return [
        {
            "candidate": p.candidate,
            "baseline": p.baseline,
            "metric": p.metric,
            "primary": p.metric == primary,
            "cand": cell(p.candidate_value),
            "base": cell(p.baseline_value),
            "diff": signed_cell(p.diff),
            "ci": f"{signed_cell(p.ci_low)} … {signed_cell(p.ci_high)}",
            "p": p_cell(p.p_value),
            "significant": significant(comp, p),
            "test": p.test,
            "n": p.n,
            "mdd": cell(p.min_detectable_diff),
            # flag what the user can act on: a difference was seen but this set cannot confirm it
            "underpowered": p.underpowered and p.diff != 0 and not significant(comp, p),
        }
        for p in sorted(comp.pairs, key=lambda p: (p.metric != primary, p.candidate, p.metric))
    ]


def md_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table's lines; cells must already be escaped."""
    return [
        "| " + " | ".join(str(h) for h in header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]


def shown_order(
    comp: Comparison, run: EvalRun, gate_cfg: GateConfig
) -> tuple[list[str], list[str], list[str]]:
    """The baselines, every candidate and every metric, in the order a report shows them:
    baselines first in their configured order, then the candidates in evaluation order
    (comparison.json's keys come back sorted); the primary metric first, format compliance last.
    """
    baselines = [b for b in comp.meta.get("baselines", gate_cfg.baselines) if b in comp.metrics]
    order = [*baselines, *(c.name for c in run.candidates), *comp.metrics]
    names = list(dict.fromkeys(n for n in order if n in comp.metrics))
    metrics = sorted(
        {m for per in comp.metrics.values() for m in per},
        key=lambda m: (m != comp.primary_metric, m == "format_compliance", m),
    )
    return baselines, names, metrics
