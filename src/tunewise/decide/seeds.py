"""Training-seed variance: several fine-tunes that differ only in their seed, judged together.

The paired tests cover the sampling of evaluation items, not the randomness of training: a second
seed can move a fine-tune by more than the gate's margin. With ``tunewise run --seeds N`` the same
fine-tune is trained N times (seeds ``train.seed``, ``train.seed + 1``, ...), each evaluated on the
same items as its own candidate (``finetuned@seed0``, ``finetuned@seed1``, ...), and a **pooled**
candidate (``finetuned``) is added whose per-item score is the mean over the seeds: the expected
score of "this recipe" on that item, averaged over training randomness. Its paired test against a
baseline is then a test about the recipe, not about one lucky run (a pooled 0/1 metric becomes a
continuous one, so the paired bootstrap is used).

The gate (:func:`tunewise.decide.decisions.with_seeds`) requires both the pooled candidate **and the
worst seed** to clear every baseline; the verdict names the worst seed and the spread. Everything
here is a pure function of an evaluation or a comparison.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from tunewise.eval.results import CandidateResult, Comparison, EvalRun, ItemResult

SEED_SEP = "@seed"


def seed_name(group: str, k: int) -> str:
    """The candidate name of the k-th seed of ``group`` (``finetuned@seed1``)."""
    return f"{group}{SEED_SEP}{k}"


def pool_seeds(run: EvalRun, group: str, members: Sequence[str]) -> CandidateResult:
    """A candidate whose per-item scores are the means over ``members`` (NaN-aware).

    Labels are not pooled (seeds may disagree), so the pooled candidate has no gold/predicted
    labels and no macro-F1; its outputs are those of the first seed, for the report.
    """
    if len(members) < 2:
        raise ValueError("pooling needs at least two seeds")
    cands = [run.candidate(m) for m in members]
    by_id = [{it.item_id: it for it in c.items} for c in cands]
    items = []
    for item_id in run.item_ids:
        its = [b[item_id] for b in by_id if item_id in b]
        metrics = list(dict.fromkeys(m for it in its for m in it.scores))
        scores = {}
        for m in metrics:
            vals = [
                float(v) for it in its if (v := it.scores.get(m)) is not None and not math.isnan(v)
            ]
            scores[m] = sum(vals) / len(vals) if vals else math.nan
        items.append(
            ItemResult(
                item_id=item_id,
                output=its[0].output if its else "",
                scores=scores,
                meta={"pooled_over": list(members)},
            )
        )
    meta = {"seeds": list(members), "group": group}
    for key in ("method", "context"):  # context: train.context, for the advisor
        if key in cands[0].meta:
            meta[key] = cands[0].meta[key]
    return CandidateResult(name=group, kind="pooled", items=items, meta=meta)


def seed_spread(comp: Comparison, members: Sequence[str], metric: str) -> dict[str, Any]:
    """Per-seed values of ``metric``, their range and standard deviation, and the worst seed."""
    values = {
        m: comp.metrics[m][metric].value for m in members if metric in comp.metrics.get(m, {})
    }
    finite = {m: v for m, v in values.items() if math.isfinite(v)}
    if not finite:
        return {"values": values, "worst": None, "min": math.nan, "max": math.nan, "sd": math.nan}
    worst = min(finite, key=lambda m: (finite[m], m))
    return {
        "values": values,
        "worst": worst,
        "min": finite[worst],
        "max": max(finite.values()),
        "sd": statistics.stdev(finite.values()) if len(finite) > 1 else 0.0,
    }
