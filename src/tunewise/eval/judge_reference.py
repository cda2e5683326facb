"""How often the LLM judge prefers the same answer as a reference metric does.

A judge no stronger than the candidates is not evidence (see ``decisions.judge_reason``); people's
ratings are the check that makes it evidence. Where the data has references there is a cheaper,
partial check on every item at no cost: for each pair of candidates and each item, the judge
prefers one answer (a higher rubric score) and so does the reference metric (chrF, say). When the
two disagree on most pairs, the judge is reading something other than closeness to what people
wrote; when they agree, the judge adds little beyond the metric. Either way the user learns how
far the judge's column can be trusted on this task.

Ties are counted apart, never as agreement: the 135M judge gives the same coarse score to many
answers, and a tie on both sides would inflate the rate for free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from tunewise.eval.reference import REFERENCE_METRICS
from tunewise.eval.results import EvalRun


def reference_metric(run: EvalRun) -> str | None:
    """The reference metric to hold the judge against: the primary one when it is a reference
    metric, else the first reference metric the evaluation scored; None without one."""
    scored = {m for c in run.candidates for it in c.items for m in it.scores}
    if run.primary_metric in REFERENCE_METRICS and run.primary_metric in scored:
        return run.primary_metric
    return next((m for m in REFERENCE_METRICS if m in scored), None)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def pair_agreement(
    judge_a: Sequence[float],
    judge_b: Sequence[float],
    ref_a: Sequence[float],
    ref_b: Sequence[float],
) -> dict[str, int]:
    """Counts over items: both prefer the same answer, they prefer different ones, the judge ties,
    the metric ties (an item where either side is unscored counts nowhere)."""
    out = {"agree": 0, "disagree": 0, "judge_ties": 0, "metric_ties": 0}
    for ja, jb, ra, rb in zip(judge_a, judge_b, ref_a, ref_b, strict=True):
        if any(math.isnan(v) for v in (ja, jb, ra, rb)):
            continue
        j, r = _sign(ja - jb), _sign(ra - rb)
        if j == 0:
            out["judge_ties"] += 1
        elif r == 0:
            out["metric_ties"] += 1
        else:
            out["agree" if j == r else "disagree"] += 1
    return out


def _column(run: EvalRun, name: str, metric: str) -> list[float]:
    by_id = {it.item_id: it.scores.get(metric) for it in run.candidate(name).items}
    return [math.nan if by_id.get(i) is None else float(by_id[i]) for i in run.item_ids]


def judge_vs_reference(run: EvalRun) -> dict[str, Any] | None:
    """Per pair of candidates and overall: how often the judge's preference agrees with the
    reference metric's; None when the evaluation has no judge scores or no reference metric."""
    has_judge = [c.name for c in run.candidates if any("judge" in it.scores for it in c.items)]
    metric = reference_metric(run)
    if len(has_judge) < 2 or metric is None:
        return None
    pairs = []
    total = {"agree": 0, "disagree": 0, "judge_ties": 0, "metric_ties": 0}
    for a, b in combinations(has_judge, 2):
        counts = pair_agreement(
            _column(run, a, "judge"),
            _column(run, b, "judge"),
            _column(run, a, metric),
            _column(run, b, metric),
        )
        decided = counts["agree"] + counts["disagree"]
        rate = counts["agree"] / decided if decided else None
        pairs.append({"a": a, "b": b, **counts, "rate": rate})
        for k, v in counts.items():
            total[k] += v
    decided = total["agree"] + total["disagree"]
    return {
        "metric": metric,
        "pairs": pairs,
        **total,
        "rate": total["agree"] / decided if decided else None,
    }


def summary_line(found: dict[str, Any]) -> str:
    """One sentence for the report."""
    decided = found["agree"] + found["disagree"]
    if not decided:
        return (
            f"judge vs {found['metric']}: no item where both prefer one answer "
            f"({found['judge_ties']} judge ties, {found['metric_ties']} {found['metric']} ties)"
        )
    return (
        f"judge vs {found['metric']}: the judge prefers the same answer as {found['metric']} on "
        f"{found['agree']} of {decided} item pairs ({100 * found['rate']:.0f}%) where both prefer "
        f"one; {found['judge_ties']} judge ties and {found['metric_ties']} {found['metric']} ties "
        "left out (50% is chance)"
    )
