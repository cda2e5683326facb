"""Champion vs challenger side by side: the per-item changes behind a difference of means.

A difference of 0.01 can be 1 item gained, or 20 gained and 19 lost; the second is a different
model with the same score, and the items it now gets wrong are the ones a user will notice. The
report shows both columns and every item that flipped (a pure function of the evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tunewise.candidates import CHAMPION
from tunewise.eval.results import EvalRun, Verdict

MAX_SHOWN = 20  # items listed per direction; the counts are always complete


def side_by_side(
    run: EvalRun, challenger: str, champion: str, metric: str, limit: int = MAX_SHOWN
) -> dict[str, Any]:
    """Means, agreement counts, and the items the challenger gained and lost against the champion.

    An item "flipped" when the two scores differ; items unscored on either side (NaN) are counted
    apart. Gains and losses are listed largest change first, then in evaluation order.
    """
    new = {it.item_id: it for it in run.candidate(challenger).items}
    old = {it.item_id: it for it in run.candidate(champion).items}
    gained, lost = [], []
    same = unscored = 0
    for item_id in run.item_ids:
        a, b = new.get(item_id), old.get(item_id)
        sa = a.scores.get(metric) if a else None
        sb = b.scores.get(metric) if b else None
        if sa is None or sb is None or math.isnan(sa) or math.isnan(sb):
            unscored += 1
            continue
        if sa == sb:
            same += 1
            continue
        row = {
            "item_id": item_id,
            "challenger_output": a.output if a else "",
            "champion_output": b.output if b else "",
            "challenger_score": sa,
            "champion_score": sb,
            "change": sa - sb,
        }
        (gained if sa > sb else lost).append(row)
    for rows in (gained, lost):
        rows.sort(key=lambda r: -abs(r["change"]))
    scored = same + len(gained) + len(lost)

    def mean(side: dict[str, Any]) -> float:
        vals = [
            v
            for it in side.values()
            if (v := it.scores.get(metric)) is not None and not math.isnan(v)
        ]
        return sum(vals) / len(vals) if vals else math.nan

    return {
        "challenger": challenger,
        "champion": champion,
        "metric": metric,
        "challenger_value": mean(new),
        "champion_value": mean(old),
        "n": scored,
        "unchanged": same,
        "unscored": unscored,
        "n_gained": len(gained),
        "n_lost": len(lost),
        "gained": gained[:limit],
        "lost": lost[:limit],
    }


def champion_views(
    run: EvalRun, verdicts: Sequence[Verdict], metric: str, width: int = 200
) -> list[dict[str, Any]]:
    """:func:`side_by_side` of each gated candidate against the production version, with its
    recorded regression check; empty when the evaluation did not include production."""
    names = {c.name for c in run.candidates}
    if CHAMPION not in names:
        return []
    views = []
    for v in verdicts:
        if v.candidate == CHAMPION or v.candidate not in names:
            continue
        view = side_by_side(run, v.candidate, CHAMPION, metric)
        record = v.champion or {}
        view.update(
            version=record.get("version", ""),
            passed=record.get("passed"),
            reason=record.get("reason", ""),
        )
        for row in (*view["gained"], *view["lost"]):
            for key in ("challenger_output", "champion_output"):
                text = row[key]
                row[key] = text if len(text) <= width else text[:width] + "…"
        views.append(view)
    return views
