"""Is the LLM judge worth trusting? Agreement with people, and position bias.

Wherever people rated a pair side by side (``tunewise rate``, ``ratings.sqlite``), the judge's
own preference on the same items is compared with theirs:

* **Agreement** (:func:`agreement`): the judge's preference per item is read off its rubric
  scores, the numbers the ``judge`` metric and the gate use (A scored higher: "a"; lower: "b";
  equal: "tie"). Each (item, rater) rating is one paired observation. Cohen's kappa corrects the
  raw agreement for what two raters with these marginals would reach by chance; its 95% CI is a
  percentile bootstrap that resamples *items* (all ratings of an item together, since raters of
  one item are not independent). Landis and Koch's scale reads 0.41-0.60 as "moderate", which is
  where ``gate.min_judge_kappa`` (0.4) sits.
* **Position bias** (:func:`position_flips`): the pairwise judge is asked twice per item with the
  answers swapped; a verdict "flips" when the winner, in candidate terms, changes with the order.
  A judge that prefers whichever answer comes first flips on every decisive item.

Both are pure functions of their inputs; :func:`agreement_from_eval` reads eval.json's judge
scores and the ratings file, and :mod:`tunewise.decide.decisions` turns a low kappa into "don't
ship".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunewise.data.schema import Example
from tunewise.eval.graders import PairwiseJudge
from tunewise.eval.items import item_prompt, item_reference
from tunewise.eval.results import EvalRun
from tunewise.runtime import models
from tunewise.runtime.cache import GenCache
from tunewise.runtime.engine import Engine
from tunewise.runtime.external import ExternalClient

CATEGORIES = ("a", "b", "tie")
N_BOOT = 2000


def cohen_kappa(x: Sequence[str], y: Sequence[str]) -> float:
    """Cohen's kappa of two label sequences over :data:`CATEGORIES`; NaN when undefined (empty,
    or both raters always say the same single category, so chance agreement is 1)."""
    n = len(x)
    if n == 0 or n != len(y):
        return math.nan
    xa, ya = np.asarray(x), np.asarray(y)
    observed = float(np.mean(xa == ya))
    chance = sum(float(np.mean(xa == c)) * float(np.mean(ya == c)) for c in CATEGORIES)
    if chance >= 1.0:
        return math.nan
    return (observed - chance) / (1.0 - chance)


def agreement(
    rows: Sequence[tuple[str, str, str]], *, n_boot: int = N_BOOT, seed: int = 0
) -> dict[str, Any]:
    """Kappa, its bootstrap CI and the raw agreement from ``(item_id, human, judge)`` rows."""
    items = sorted({r[0] for r in rows})
    human = [r[1] for r in rows]
    judge = [r[2] for r in rows]
    out: dict[str, Any] = {
        "kappa": cohen_kappa(human, judge),
        "raw_agreement": float(np.mean([h == j for h, j in zip(human, judge, strict=True)]))
        if rows
        else math.nan,
        "n": len(rows),
        "n_items": len(items),
        "ci_low": math.nan,
        "ci_high": math.nan,
    }
    if len(items) < 2:
        return out
    by_item: dict[str, list[int]] = {}
    for k, r in enumerate(rows):
        by_item.setdefault(r[0], []).append(k)
    groups = [by_item[i] for i in items]
    rng = np.random.default_rng(seed)
    h, j = np.asarray(human), np.asarray(judge)
    reps = []
    for _ in range(n_boot):
        drawn = rng.integers(0, len(groups), len(groups))
        idx = [k for g in drawn for k in groups[g]]
        reps.append(cohen_kappa(h[idx].tolist(), j[idx].tolist()))
    finite = np.asarray([r for r in reps if math.isfinite(r)])
    if finite.size:
        out["ci_low"], out["ci_high"] = (float(q) for q in np.quantile(finite, [0.025, 0.975]))
    return out


def judge_preference(score_a: float | None, score_b: float | None) -> str | None:
    """ "a", "b" or "tie" from two rubric scores; None when either is unscored (NaN)."""
    if score_a is None or score_b is None or math.isnan(score_a) or math.isnan(score_b):
        return None
    return "a" if score_a > score_b else "b" if score_b > score_a else "tie"


def position_flips(first: Sequence[str | None], swapped: Sequence[str | None]) -> dict[str, Any]:
    """Share of items whose pairwise verdict changes when the answers swap places.

    ``first[i]`` is the judge's reply with A shown first, ``swapped[i]`` with B shown first, both
    as given ("a" = the answer shown first won). Swapped replies are mapped back to candidates
    before comparing; items where either reply did not parse are left out and counted.
    """
    back = {"a": "b", "b": "a", "tie": "tie"}
    pairs = [
        (f, back[s]) for f, s in zip(first, swapped, strict=True) if f is not None and s is not None
    ]
    flips = sum(f != s for f, s in pairs)
    # a judge biased to the first position answers "a" both times: candidate A, then candidate B
    first_pos = sum(1 for f, s in zip(first, swapped, strict=True) if f == "a" and s == "a")
    n = len(pairs)
    return {
        "flip_share": flips / n if n else math.nan,
        "n": n,
        "unparsed": len(first) - n,
        "first_position_wins": first_pos,
    }


def agreement_from_eval(run: EvalRun, ratings_db: Path | None) -> list[dict[str, Any]]:
    """Judge-vs-people agreement for every rated pair whose two candidates carry judge scores."""
    if ratings_db is None or not Path(ratings_db).is_file():
        return []
    from tunewise.eval.human import RatingStore  # lazy: the rating app pulls scipy

    names = {c.name: c for c in run.candidates}
    store = RatingStore(ratings_db)
    try:
        out = []
        for a, b in store.pairs():
            if a not in names or b not in names:
                continue
            sa = {it.item_id: it.scores.get("judge") for it in names[a].items}
            sb = {it.item_id: it.scores.get("judge") for it in names[b].items}
            rows = []
            for r in store.rows(a, b):
                pref = judge_preference(sa.get(r["item_id"]), sb.get(r["item_id"]))
                if r["choice"] != "skip" and pref is not None:
                    rows.append((r["item_id"], r["choice"], pref))
            if rows:
                out.append({"a": a, "b": b, **agreement(rows)})
        return out
    finally:
        store.close()


CALIBRATION_FILE = "judge_calibration.json"


def run_calibration(
    run: EvalRun, ratings_db: Path, backend: Any, *, judge_name: str, progress: bool = False
) -> dict[str, Any]:
    """For every rated pair: the pairwise judge in both orders on the rated items, its position
    bias and its agreement with people, next to the rubric judge's agreement. Runs the judge."""
    from tunewise.eval.human import RatingStore  # lazy: the rating app pulls scipy

    judge = PairwiseJudge(backend)
    names = {c.name: c for c in run.candidates}
    store = RatingStore(ratings_db)
    try:
        rated = {(a, b): store.rows(a, b) for a, b in store.pairs() if a in names and b in names}
    finally:
        store.close()
    pairs = []
    for (a, b), rows in rated.items():
        ia = {it.item_id: it for it in names[a].items}
        ib = {it.item_id: it for it in names[b].items}
        rated_ids = {r["item_id"] for r in rows if r["choice"] != "skip"}
        ids = sorted(i for i in rated_ids if i in ia and i in ib)
        examples = [
            Example(
                messages=[
                    {"role": "user", "content": item_prompt(ia[i], run)},
                    {"role": "assistant", "content": item_reference(ia[i], run)},
                ]
            )
            for i in ids
        ]
        first, swapped = judge.verdicts_both_orders(
            examples, [ia[i].output for i in ids], [ib[i].output for i in ids], progress=progress
        )
        back = {"a": "b", "b": "a", "tie": "tie"}
        combined = {
            i: (f if f == back[s] else "tie")
            for i, f, s in zip(ids, first, swapped, strict=True)
            if f is not None and s is not None
        }
        human = [(r["item_id"], r["choice"]) for r in rows if r["choice"] != "skip"]
        pairwise_rows = [(i, h, combined[i]) for i, h in human if i in combined]
        pairs.append(
            {
                "a": a,
                "b": b,
                "position_bias": position_flips(first, swapped),
                "pairwise_agreement": agreement(pairwise_rows),
            }
        )
    rubric = {(x["a"], x["b"]): x for x in agreement_from_eval(run, ratings_db)}
    for p in pairs:
        p["rubric_agreement"] = rubric.get((p["a"], p["b"]))
    return {"judge": judge_name, "pairwise_version": judge.version, "pairs": pairs}


def attach_judge_agreement(comp: Any, run: EvalRun, eval_dir: Path) -> None:
    """Put the rubric judge's agreement with people into ``comp.meta`` when the gate needs it
    (a judge-scored primary metric); the decision is
    :func:`tunewise.decide.decisions.judge_reason`."""
    if comp.primary_metric != "judge":
        return
    from tunewise.eval.human import ratings_db  # lazy: the rating app pulls scipy

    comp.meta["judge_agreement"] = agreement_from_eval(run, ratings_db(eval_dir))


def judge_backend(cfg: Any) -> tuple[Any, str]:
    """The project's judge (``eval.judge_model``: an external name or a local model; the base
    model when unset), as the harness builds it, and its name."""
    name = cfg.eval.judge_model or cfg.model.base
    external = {e.name: e for e in cfg.eval.external}
    if name in external:
        return ExternalClient.from_config(external[name], cache=GenCache()), name
    engine = Engine(models.resolve(name), batch_size=cfg.eval.batch_size, cache=GenCache())
    return engine, name
