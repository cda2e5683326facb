"""One-sided paired tests against a margin: "the candidate is not worse than the reference by more
than ``m``" (non-inferiority, and the regression check against a production version).

The hypotheses, on the primary metric, with ``d`` = candidate minus reference on the same items:

    H0: d <= -m  (worse by the margin or more)      H1: d > -m  (non-inferior)

Rejecting H0 at ``alpha`` is the claim a user ships on, so the test must keep the false-claim rate
at or below ``alpha`` when the truth sits exactly on the margin, whatever the nuisance parameter
(how often the two disagree).

* **0/1 metrics** (accuracy, format compliance): Tango's score test for a difference of paired
  proportions (Tango 1998, Statistics in Medicine 17:891), with a continuity correction of one
  item on ``wins - losses``. The uncorrected score test runs slightly hot on small sets (exact
  size up to 0.060 at n=20, 0.056 at n=100 for alpha 0.05); with the correction its exact size,
  the supremum over the disagreement rate, stayed at or below alpha for n from 5 to 700, margins
  0 to 0.2 and alpha 0.025/0.05/0.1 (``tests/test_margin.py`` recomputes a grid of these exactly).
  The one-sided confidence bound is the same test inverted, so "bound > -m" and "p < alpha" agree.
* **Continuous per-item metrics** (``judge``): a one-sided paired t interval on the per-item
  differences; items either side left unscored (NaN) drop out of the pair. Its size is nominal
  for the mean of bounded scores at the sample sizes an evaluation has, not exact.
* **No difference at all** (a retrained model that answers like production, item for item): the
  t interval is undefined (no spread), but the claim is still testable without assuming a
  distribution. Per-item scores lie in [0, 1], so a drop needs items that score differently, and
  each such item costs at most 1. With none of ``n`` items differing, the Clopper-Pearson upper
  bound on the rate of differing items, ``1 - alpha ** (1 / n)``, bounds the drop; the p-value is
  the chance of seeing no differing item when a drop of exactly the margin comes from items that
  lose 1 each, ``(1 - m) ** n``. Conservative (it lets every differing item lose everything), so
  100 identical items show non-inferiority at 0.03 but not at 0.01; ~300 show it at 0.01, as the
  Tango test does for 0/1 metrics with no disagreement.

Macro-F1 is not a per-item mean, so it has no paired test here; :func:`margin_test` refuses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

from tunewise.errors import UserError
from tunewise.eval.results import EvalRun, MarginTest

CONTINUITY = 1.0  # items of wins - losses; see the module docstring for the exact-size check


def tango_z(wins: float, losses: float, n: int, d0: float, cc: float = CONTINUITY) -> float:
    """Score statistic for H0: p_win - p_loss = d0 on n paired 0/1 items (large: evidence d > d0).

    The variance is evaluated at the restricted maximum-likelihood estimate of the loss rate
    under H0 (the root of 2n q^2 + B q + C = 0 below), which is what keeps the test honest when
    there are few disagreements.
    """
    if n <= 0:
        return math.nan
    a = 2.0 * n
    b = -(wins + losses) + (2.0 * n - wins + losses) * d0
    c = -losses * d0 * (1.0 - d0)
    q = (-b + math.sqrt(max(b * b - 4.0 * a * c, 0.0))) / (2.0 * a)  # restricted P(loss)
    var = n * (2.0 * q + d0 * (1.0 - d0))
    num = wins - losses - n * d0 - cc
    if var <= 0:
        return math.inf if num > 0 else -math.inf
    return num / math.sqrt(var)


def binary_margin(
    cand: np.ndarray, ref: np.ndarray, margin: float, alpha: float
) -> tuple[float, float, float, int, int]:
    """(diff, one-sided lower bound, p, wins, losses) for 0/1 per-item scores."""
    n = int(cand.size)
    wins = int(np.sum((cand == 1) & (ref == 0)))
    losses = int(np.sum((cand == 0) & (ref == 1)))
    diff = (wins - losses) / n if n else math.nan
    z = tango_z(wins, losses, n, -margin)
    p = float(sps.norm.sf(z)) if not math.isnan(z) else math.nan
    return diff, _lower_bound(wins, losses, n, alpha), p, wins, losses


def _lower_bound(wins: int, losses: int, n: int, alpha: float) -> float:
    """The smallest d0 the test does not reject at alpha: the one-sided (1 - alpha) bound.

    The statistic falls as d0 rises, so bisection finds where it crosses the critical value.
    """
    if n <= 0:
        return math.nan
    crit = float(sps.norm.isf(alpha))
    lo, hi = -1.0, 1.0
    if tango_z(wins, losses, n, lo + 1e-12) <= crit:
        return -1.0  # nothing is excluded
    for _ in range(60):
        mid = (lo + hi) / 2
        if tango_z(wins, losses, n, mid) > crit:
            lo = mid
        else:
            hi = mid
    return lo


def continuous_margin(diffs: np.ndarray, margin: float, alpha: float) -> tuple[float, float, float]:
    """(mean diff, one-sided lower bound, p) from a paired t on per-item differences."""
    n = diffs.size
    if n < 2:
        return (float(diffs.mean()) if n else math.nan), math.nan, math.nan
    mean = float(diffs.mean())
    se = float(diffs.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        if mean == 0.0:
            return 0.0, *no_difference_bound(n, margin, alpha)
        # Every item moved by the same nonzero amount: the sample's spread says nothing about
        # the population's, and no bound holds without one.
        return mean, math.nan, math.nan
    t = (mean + margin) / se
    lower = mean - float(sps.t.isf(alpha, n - 1)) * se
    return mean, lower, float(sps.t.sf(t, n - 1))


def no_difference_bound(n: int, margin: float, alpha: float) -> tuple[float, float]:
    """(one-sided lower bound, p) when none of ``n`` paired items differ (module docstring)."""
    upper_rate = 1.0 - alpha ** (1.0 / n)  # Clopper-Pearson, 0 of n
    return -upper_rate, (1.0 - margin) ** n


def items_to_show_tie(margin: float, alpha: float, test: str) -> int:
    """The fewest items with no difference at all that show non-inferiority at ``margin``."""
    if margin <= 0:
        return 0  # never: a zero margin needs a positive difference
    if test == "no-difference":
        return math.ceil(math.log(alpha) / math.log1p(-margin))
    crit = float(sps.norm.isf(alpha))
    n = 1
    while tango_z(0, 0, n, -margin) <= crit and n < 1_000_000:
        n *= 2
    lo, hi = n // 2, n
    while lo + 1 < hi:  # the statistic grows with n at zero disagreement
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if tango_z(0, 0, mid, -margin) > crit else (mid, hi)
    return hi


def _scores(run: EvalRun, name: str, metric: str) -> np.ndarray:
    try:
        cand = run.candidate(name)
    except KeyError:
        raise UserError(f"{name!r} is not in the evaluation") from None
    by_id = {it.item_id: it.scores.get(metric) for it in cand.items}
    missing = [i for i in run.item_ids if i not in by_id]
    if missing:
        raise UserError(
            f"candidate {name!r}: {len(missing)} item(s) missing, e.g. {missing[:3]}; "
            "both sides of a margin test must be scored on the same items"
        )
    return np.array([math.nan if by_id[i] is None else float(by_id[i]) for i in run.item_ids])


def margin_test(
    run: EvalRun, candidate: str, reference: str, metric: str, margin: float, alpha: float
) -> MarginTest:
    """One-sided paired test of ``candidate`` against ``reference`` at ``margin`` on ``metric``."""
    if not 0 < alpha < 1:
        raise UserError(f"alpha must be in (0, 1), got {alpha}")
    if not 0 <= margin < 1:
        raise UserError(f"margin must be in [0, 1), got {margin}")
    if metric == "macro_f1":
        raise UserError(
            "a margin test needs a per-item metric; macro_f1 is computed over the whole set "
            "(use accuracy, or a per-field accuracy, as the primary metric)"
        )
    cand, ref = _scores(run, candidate, metric), _scores(run, reference, metric)
    joint = ~(np.isnan(cand) | np.isnan(ref))
    cand, ref = cand[joint], ref[joint]
    same = _same_outputs(run, candidate, reference, joint)
    binary = metric != "judge" and bool(np.all(np.isin(np.concatenate([cand, ref]), (0.0, 1.0))))
    wins = losses = None
    if binary:
        diff, lower, p, wins, losses = binary_margin(cand, ref, margin, alpha)
        test = "tango-score-cc"
    else:
        diff, lower, p = continuous_margin(cand - ref, margin, alpha)
        no_spread = cand.size >= 2 and bool(np.all(cand == ref))
        test = "no-difference" if no_spread else "paired-t"
    return MarginTest(
        candidate=candidate,
        reference=reference,
        metric=metric,
        margin=margin,
        alpha=alpha,
        candidate_value=float(cand.mean()) if cand.size else math.nan,
        reference_value=float(ref.mean()) if ref.size else math.nan,
        diff=diff,
        lower_bound=lower,
        p_value=p,
        test=test,
        n=int(cand.size),
        wins=wins,
        losses=losses,
        same_outputs=same,
        reference_kind=run.candidate(reference).kind,
    )


def _same_outputs(run: EvalRun, candidate: str, reference: str, joint: np.ndarray) -> int:
    """How many of the jointly scored items both answered with the very same text."""
    cand = {it.item_id: it.output for it in run.candidate(candidate).items}
    ref = {it.item_id: it.output for it in run.candidate(reference).items}
    ids = [i for i, keep in zip(run.item_ids, joint, strict=True) if keep]
    return sum(1 for i in ids if cand.get(i) == ref.get(i))


def margin_tests(
    run: EvalRun,
    candidates: Sequence[str],
    reference: str,
    margin: float,
    alpha: float,
    metric: str | None = None,
) -> list[MarginTest]:
    """The test for each candidate (other than the reference) present in the run."""
    names = {c.name for c in run.candidates}
    metric = metric or run.primary_metric
    return [
        margin_test(run, c, reference, metric, margin, alpha)
        for c in candidates
        if c != reference and c in names and reference in names
    ]
