"""Confidence intervals, paired tests and power for an :class:`EvalRun`.

Every candidate was scored on the same items, so the honest comparison is *paired*: each item is
its own control, and item difficulty (the largest source of variance in an eval set) cancels out.

* **Confidence intervals**: a nonparametric bootstrap over items. Item indices are resampled once
  per replicate and the same replicate is applied to every metric and every candidate, so the CIs
  of a table are mutually consistent (a replicate that happens to draw hard items draws them for
  everyone). BCa intervals by default (bias-corrected and accelerated, which behaves better than
  the percentile interval for bounded metrics near 0 or 1); percentile on request.
* **Paired tests** of every non-baseline candidate against every baseline on every shared metric:
  exact McNemar (a two-sided binomial test on the discordant pairs) for binary per-item metrics,
  a paired bootstrap for continuous ones (``judge``) and for ``macro_f1``; always with a CI on
  the difference.
* **Power**: the minimum detectable difference (MDD) at ``alpha`` with 80% power for the items at
  hand. When the observed difference is smaller than the MDD the pair is flagged ``underpowered``:
  the eval set is too small to tell, whichever way the p-value fell.

``judge`` scores are NaN when the judge's reply could not be parsed: those items are counted
(``meta["nan_counts"]``) and shown, and each estimate says on how many items it rests (``n``).

Resampling is vectorised: a replicate is a vector of item counts ``w`` (how often each item was
drawn), so a bootstrap mean is ``w @ x / w @ mask`` and a whole block of replicates is a matrix
product. Macro-F1 uses the same counts on per-class TP/FP/FN indicators.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import sparse
from scipy import stats as sps

from tunewise.errors import UserError
from tunewise.eval.results import Comparison, EvalRun, MetricEstimate, PairedTest

CONFIDENCE = 0.95
POWER = 0.80
CONTINUOUS_METRICS = frozenset({"judge"})  # never treated as binary, even if every value is 0 or 1
MACRO_F1 = "macro_f1"
CiMethod = Literal["bca", "percentile"]

# Bound the (replicates x items) weight matrix to ~32 MB of float64 per block.
_BLOCK_CELLS = 4_000_000


# ----------------------------------------------------------------------------- the score table
class _Table:
    """Every candidate's per-item scores aligned on ``run.item_ids``."""

    def __init__(self, run: EvalRun) -> None:
        ids = list(run.item_ids)
        if not ids:
            raise UserError("the evaluation has no items; nothing to compare")
        dupes = _duplicates(ids)
        if dupes:
            raise UserError(f"eval.json: item_ids has duplicates, e.g. {dupes[:3]}")
        if not run.candidates:
            raise UserError("the evaluation has no candidates; nothing to compare")
        pos = {item_id: i for i, item_id in enumerate(ids)}
        n = len(ids)
        self.item_ids = ids
        self.names = [c.name for c in run.candidates]
        if len(set(self.names)) != len(self.names):
            raise UserError(f"eval.json: candidate names are not unique: {self.names}")
        # scores[metric][candidate] -> (n,) with NaN where unscored
        self.scores: dict[str, dict[str, np.ndarray]] = {}
        self.gold: dict[str, list[str | None]] = {}
        self.pred: dict[str, list[str | None]] = {}
        for cand in run.candidates:
            seen = [it.item_id for it in cand.items]
            dupes = _duplicates(seen)
            if dupes:
                raise UserError(f"candidate {cand.name!r}: duplicate items, e.g. {dupes[:3]}")
            extra = [i for i in seen if i not in pos]
            if extra:
                raise UserError(
                    f"candidate {cand.name!r}: {len(extra)} item(s) not in the evaluation's "
                    f"item_ids, e.g. {extra[:3]}"
                )
            missing = sorted(set(ids) - set(seen), key=pos.__getitem__)
            if missing:
                # Dropping them silently would compare candidates on different items.
                raise UserError(
                    f"candidate {cand.name!r}: {len(missing)} of {n} items missing, e.g. "
                    f"{missing[:3]}; every candidate must be scored on the same items "
                    "(rerun `tunewise eval` for it)"
                )
            gold: list[str | None] = [None] * n
            pred: list[str | None] = [None] * n
            for it in cand.items:
                i = pos[it.item_id]
                gold[i], pred[i] = it.gold, it.predicted
                for metric, value in it.scores.items():
                    arr = self.scores.setdefault(metric, {}).get(cand.name)
                    if arr is None:
                        arr = self.scores[metric][cand.name] = np.full(n, np.nan)
                    arr[i] = np.nan if value is None else float(value)
            if any(g is not None for g in gold):
                self.gold[cand.name], self.pred[cand.name] = gold, pred
        # Macro-F1 averages over the gold classes of the evaluation set: a fixed set. Counting every
        # invented label as a class of its own (sklearn's default, the union with predictions) adds
        # a zero per invented label, and a bootstrap resample that drops those singletons scores
        # higher than the sample itself: the replicates sit above the estimate and the CI misses it.
        self.classes = sorted(
            {lab for name in self.gold for lab in self.gold[name] if lab is not None}
        )

    def kind(self, metric: str) -> str:
        if metric == MACRO_F1:
            return "derived"
        if metric in CONTINUOUS_METRICS:
            return "continuous"
        for arr in self.scores[metric].values():
            vals = arr[~np.isnan(arr)]
            if not np.all((vals == 0.0) | (vals == 1.0)):
                return "continuous"
        return "binary"

    def encoded_labels(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Gold and predicted class indices; -1 = no gold (item ignored) / a prediction outside the
        gold classes (unparseable or invented: a miss for the item's gold class)."""
        index = {c: k for k, c in enumerate(self.classes)}
        gold = np.array([-1 if g is None else index[g] for g in self.gold[name]])
        pred = np.array([index.get(p, -1) if p is not None else -1 for p in self.pred[name]])
        return gold, pred


def _duplicates(xs: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    return [x for x in xs if x in seen or seen.add(x)]  # type: ignore[func-returns-value]


# ----------------------------------------------------------------------------- the bootstrap
class _Bootstrap:
    """Statistics registered once, evaluated on shared resampling weights.

    Each statistic yields its full-sample value ``theta``, its bootstrap replicates ``boot``
    (n_boot,) and its jackknife (leave-one-item-out) values ``jack`` (n,) for BCa, NaN where
    leaving the item out changes nothing (an unscored item).
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._x: list[np.ndarray] = []  # mean statistics: values with NaN -> 0
        self._m: list[np.ndarray] = []  # and their masks
        self._f1: list[tuple[sparse.csr_matrix, ...]] = []  # TP, FP, FN indicators (n, K)
        self._keys: list[tuple[str, int]] = []
        self.theta: list[float] = []
        self.boot: list[np.ndarray] = []
        self.jack: list[np.ndarray] = []

    def add_mean(self, x: np.ndarray) -> int:
        mask = ~np.isnan(x)
        self._x.append(np.where(mask, x, 0.0))
        self._m.append(mask.astype(float))
        self._keys.append(("mean", len(self._x) - 1))
        return len(self._keys) - 1

    def add_macro_f1(self, gold: np.ndarray, pred: np.ndarray, n_classes: int) -> int:
        k = np.arange(n_classes)
        has_gold = gold[:, None] >= 0
        g = (gold[:, None] == k) & has_gold  # (n, K)
        p = (pred[:, None] == k) & has_gold  # an item without gold is not evaluated
        # One nonzero per row at most: sparse, so a block of replicates costs O(b * n), not
        # O(b * n * K).
        self._f1.append(tuple(sparse.csr_matrix(x.astype(float)) for x in (g & p, p & ~g, g & ~p)))
        self._keys.append(("f1", len(self._f1) - 1))
        return len(self._keys) - 1

    @staticmethod
    def _macro_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
        # The gold classes present in this (re)sample, as sklearn's f1_score(labels=gold classes,
        # average="macro"); a prediction outside them is a miss for its gold class.
        denom = 2 * tp + fp + fn
        present = (tp + fn) > 0  # gold classes of this (re)sample
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=present)
        count = present.sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, f1.sum(axis=-1) / count, np.nan)

    def run(self, n_boot: int, seed: int) -> None:
        n = self.n
        rng = np.random.default_rng(seed)
        X = np.stack(self._x, axis=1) if self._x else np.zeros((n, 0))  # (n, S)
        M = np.stack(self._m, axis=1) if self._m else np.zeros((n, 0))
        mean_boot: list[np.ndarray] = []
        f1_boot: list[list[np.ndarray]] = [[] for _ in self._f1]
        for W in _weights(n, n_boot, rng):  # (b, n) item counts per replicate
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_boot.append((W @ X) / (W @ M))  # (b, S)
            for j, ind in enumerate(self._f1):
                f1_boot[j].append(
                    self._macro_f1(*(np.asarray((x.T @ W.T).T) for x in ind))
                )  # (b, K) each
        mb = np.concatenate(mean_boot, axis=0) if mean_boot else np.zeros((0, X.shape[1]))
        S, C = X.sum(axis=0), M.sum(axis=0)
        for kind, j in self._keys:
            if kind == "mean":
                x, m = X[:, j], M[:, j]
                with np.errstate(invalid="ignore", divide="ignore"):
                    theta = S[j] / C[j] if C[j] > 0 else np.nan
                    jack = np.where(m > 0, (S[j] - x) / (C[j] - m), np.nan)
                self.theta.append(float(theta))
                self.boot.append(mb[:, j])
                self.jack.append(jack)
            else:
                tp, fp, fn = (x.toarray() for x in self._f1[j])
                tot = tp.sum(0), fp.sum(0), fn.sum(0)
                self.theta.append(float(self._macro_f1(*tot)))
                self.boot.append(np.concatenate(f1_boot[j]))
                evaluated = (tp + fn).sum(axis=1) > 0
                jack = self._macro_f1(tot[0] - tp, tot[1] - fp, tot[2] - fn)
                self.jack.append(np.where(evaluated, jack, np.nan))


def _weights(n: int, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Blocks of resampling weights: row r counts how often replicate r drew each item."""
    block = max(1, min(n_boot, _BLOCK_CELLS // n))
    done = 0
    while done < n_boot:
        b = min(block, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))  # (b, n) item indices, drawn once per replicate
        flat = (idx + (np.arange(b) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(float)
        done += b


def bootstrap_ci(
    theta: float,
    boot: np.ndarray,
    jack: np.ndarray | None = None,
    *,
    confidence: float = CONFIDENCE,
    method: CiMethod = "bca",
) -> tuple[float, float]:
    """A two-sided bootstrap interval from replicates (BCa needs the jackknife values)."""
    boot = boot[np.isfinite(boot)]
    if not math.isfinite(theta) or boot.size == 0:
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    probs = np.array([tail, 1 - tail])
    if method == "bca" and np.ptp(boot) > 0:
        # Bias correction from where theta sits in the replicates (ties split, which matters
        # for discrete statistics such as accuracy), clipped so a degenerate side stays finite.
        prop = (np.mean(boot < theta) + 0.5 * np.mean(boot == theta)).clip(
            1 / (boot.size + 1), boot.size / (boot.size + 1)
        )
        z0 = sps.norm.ppf(prop)
        a = 0.0
        if jack is not None:
            jk = jack[np.isfinite(jack)]
            d = jk.mean() - jk if jk.size else jk
            ss = float(np.sum(d**2))
            a = float(np.sum(d**3) / (6 * ss**1.5)) if ss > 0 else 0.0
        z = sps.norm.ppf(probs)
        probs = sps.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    elif method not in ("bca", "percentile"):
        raise ValueError(f"unknown CI method {method!r}")
    lo, hi = np.quantile(boot, probs)
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- tests and power
def mcnemar_exact(cand: np.ndarray, base: np.ndarray) -> tuple[float, int, int]:
    """Two-sided exact McNemar on paired 0/1 scores: (p, wins, losses) of cand vs base."""
    wins = int(np.sum((cand == 1) & (base == 0)))
    losses = int(np.sum((cand == 0) & (base == 1)))
    if wins + losses == 0:
        return 1.0, 0, 0
    return float(sps.binomtest(wins, wins + losses, 0.5).pvalue), wins, losses


def bootstrap_p(theta: float, boot: np.ndarray) -> float:
    """Two-sided paired-bootstrap p-value for H0: difference = 0.

    The replicates minus theta approximate the null distribution of the difference; p is the
    share at least as far from 0 as the observed one (with the +1 that keeps it above 0).
    """
    boot = boot[np.isfinite(boot)]
    if not math.isfinite(theta) or boot.size == 0:
        return math.nan
    if theta == 0:
        return 1.0
    extreme = int(np.sum(np.abs(boot - theta) >= abs(theta)))
    return min(1.0, (1 + extreme) / (boot.size + 1))


def _z_total(alpha: float, power: float = POWER) -> float:
    return float(sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power))


def mcnemar_min_detectable(n: int, discordant: int, alpha: float, power: float = POWER) -> float:
    """Smallest paired difference in a 0/1 metric that ``n`` items detect at ``alpha`` / ``power``.

    Normal approximation for McNemar, d = (z_a/2 + z_b) * sqrt(psi / n) with psi the discordant
    rate, floored by what the exact test can ever reach: it needs at least k discordant pairs,
    all one way, with 2 * 0.5**k < alpha, so no difference below k / n can be significant.
    """
    if n <= 0:
        return math.inf
    k_min = math.floor(math.log2(2 / alpha)) + 1
    floor = k_min / n
    psi = discordant / n
    return min(1.0, max(_z_total(alpha, power) * math.sqrt(psi / n), floor))


# ----------------------------------------------------------------------------- compare
Pair = tuple[str, str]  # (candidate, baseline): the candidate minus the baseline, item by item


def default_pairs(candidates: Sequence[str], baselines: Sequence[str]) -> list[Pair]:
    """Every candidate that is not a baseline against every baseline present (the gate's tests)."""
    present = [b for b in baselines if b in candidates]
    return [(c, b) for c in candidates if c not in baselines for b in present]


def compare(
    run: EvalRun,
    *,
    baselines: Sequence[str],
    pairs: Sequence[Pair] | None = None,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    ci_method: CiMethod = "bca",
) -> Comparison:
    """CIs for every candidate and metric, and a paired test per (candidate, baseline) pair.

    ``pairs`` defaults to :func:`default_pairs`. Every statistic is evaluated on one shared set
    of resampling weights drawn from ``seed``, so extra pairs (rung against rung) cost one more
    column in one bootstrap, and a pair's numbers do not depend on which other pairs were asked
    for. Pairs whose baseline was not evaluated are skipped; baselines absent from the run are
    listed in ``meta["missing_baselines"]`` (the gate turns that into "don't ship"). A candidate
    missing items is a :class:`UserError`.
    """
    _check_settings(alpha, n_boot)
    table = _Table(run)
    todo = _resolve_pairs(table.names, baselines, pairs)
    cmp = _Comparer(table, alpha, ci_method)
    specs = cmp.register_pairs(todo)
    cmp.boot.run(n_boot, seed)
    estimates, nan_counts = cmp.estimates()
    tested = [cmp.paired_test(spec, estimates) for spec in specs]
    meta: dict[str, Any] = {
        "project": run.project,
        "split": run.split,
        "split_hash": run.split_hash,
        "n_items": len(table.item_ids),
        "candidates": table.names,
        "baselines": list(baselines),
        "missing_baselines": [b for b in baselines if b not in table.names],
        "alpha": alpha,
        "confidence": CONFIDENCE,
        "power": POWER,
        "n_boot": n_boot,
        "seed": seed,
        "ci_method": ci_method,
        "metric_kinds": cmp.kinds,
        "nan_counts": nan_counts,
        "underpowered": [note for _, note in tested if note is not None],
        # What each retrieval rung retrieved from: the gate's advice differs for documents
        # (facts) and labelled examples (nearest neighbours).
        "retrieval_sources": {
            c.name: c.meta["sources"] for c in run.candidates if c.meta.get("sources")
        },
    }
    return Comparison(
        primary_metric=run.primary_metric,
        metrics=estimates,
        pairs=[test for test, _ in tested],
        meta=meta,
    )


def _check_settings(alpha: float, n_boot: int) -> None:
    if not 0 < alpha < 1:
        raise UserError(f"alpha must be in (0, 1), got {alpha}")
    if n_boot < 100:
        raise UserError(f"n_boot must be at least 100, got {n_boot}")
    if 1 / (n_boot + 1) >= alpha / 5:
        # A bootstrap p-value cannot go below 1/(n_boot+1): too few resamples and nothing can
        # ever be significant at this alpha.
        raise UserError(
            f"n_boot={n_boot} is too few for alpha={alpha:g}: use at least {math.ceil(5 / alpha)}"
        )


def _resolve_pairs(
    names: list[str], baselines: Sequence[str], pairs: Sequence[Pair] | None
) -> list[Pair]:
    if pairs is None:
        return default_pairs(names, baselines)
    unknown = sorted({c for c, _ in pairs if c not in names})
    if unknown:
        raise UserError(
            f"compare: {', '.join(unknown)} not in the evaluation (have: {', '.join(names)})"
        )
    return list(dict.fromkeys((c, b) for c, b in pairs if b in names and c != b))


@dataclass
class _PairSpec:
    candidate: str
    baseline: str
    metric: str
    key: int | None  # the bootstrap statistic of the per-item difference (None: macro-F1)
    diff: np.ndarray | None  # (n,) per-item difference, NaN where either side is unscored


class _Comparer:
    """One bootstrap over a score table: the estimates first, then the paired differences."""

    def __init__(self, table: _Table, alpha: float, ci_method: CiMethod) -> None:
        self.table, self.alpha, self.ci_method = table, alpha, ci_method
        self.boot = _Bootstrap(len(table.item_ids))
        self.kinds = {m: table.kind(m) for m in sorted(table.scores)}
        self.keys: dict[tuple[str, str], int] = {}  # (candidate, metric) -> statistic
        for m in sorted(table.scores):
            for name, arr in table.scores[m].items():
                self.keys[(name, m)] = self.boot.add_mean(arr)
        if table.classes:
            self.kinds[MACRO_F1] = "derived"
            for name in table.gold:
                gold, pred = table.encoded_labels(name)
                self.keys[(name, MACRO_F1)] = self.boot.add_macro_f1(gold, pred, len(table.classes))

    def register_pairs(self, pairs: list[Pair]) -> list[_PairSpec]:
        """Paired differences on the items both sides scored (NaN in either drops the item)."""
        specs = []
        for cand, base in pairs:
            for m in [*sorted(self.table.scores), MACRO_F1]:
                if (cand, m) not in self.keys or (base, m) not in self.keys:
                    continue
                if m == MACRO_F1:  # not a mean of per-item values: the difference of two F1s
                    specs.append(_PairSpec(cand, base, m, None, None))
                else:
                    diff = self.table.scores[m][cand] - self.table.scores[m][base]
                    specs.append(_PairSpec(cand, base, m, self.boot.add_mean(diff), diff))
        return specs

    def _ci(self, theta: float, reps: np.ndarray, jack: np.ndarray) -> tuple[float, float]:
        return bootstrap_ci(theta, reps, jack, confidence=CONFIDENCE, method=self.ci_method)

    def estimates(self) -> tuple[dict[str, dict[str, MetricEstimate]], dict[str, dict[str, int]]]:
        """Every candidate's estimate per metric, and how many items each left unscored."""
        table, boot, n = self.table, self.boot, len(self.table.item_ids)
        estimates: dict[str, dict[str, MetricEstimate]] = {name: {} for name in table.names}
        nan_counts: dict[str, dict[str, int]] = {}
        for (name, m), key in self.keys.items():
            lo, hi = self._ci(boot.theta[key], boot.boot[key], boot.jack[key])
            if m == MACRO_F1:
                gold, _ = table.encoded_labels(name)
                n_used = int(np.sum(gold >= 0))
            else:
                n_used = int(np.sum(~np.isnan(table.scores[m][name])))
                if n_used < n:
                    nan_counts.setdefault(name, {})[m] = n - n_used
            estimates[name][m] = MetricEstimate(boot.theta[key], lo, hi, n_used)
        return estimates, nan_counts

    def _difference(
        self, s: _PairSpec, estimates: dict[str, dict[str, MetricEstimate]]
    ) -> tuple[float, np.ndarray, np.ndarray, float, float, int]:
        """(diff, its replicates, its jackknife, candidate value, baseline value, items)."""
        boot, scores = self.boot, self.table.scores
        if s.key is None:
            kc, kb = self.keys[(s.candidate, s.metric)], self.keys[(s.baseline, s.metric)]
            theta, cv, bv = boot.theta[kc] - boot.theta[kb], boot.theta[kc], boot.theta[kb]
            reps, jack = boot.boot[kc] - boot.boot[kb], boot.jack[kc] - boot.jack[kb]
            return theta, reps, jack, cv, bv, estimates[s.candidate][s.metric].n
        assert s.diff is not None
        joint = ~np.isnan(s.diff)
        n_pair = int(joint.sum())
        cv = float(np.mean(scores[s.metric][s.candidate][joint])) if n_pair else math.nan
        bv = float(np.mean(scores[s.metric][s.baseline][joint])) if n_pair else math.nan
        return boot.theta[s.key], boot.boot[s.key], boot.jack[s.key], cv, bv, n_pair

    def paired_test(
        self, s: _PairSpec, estimates: dict[str, dict[str, MetricEstimate]]
    ) -> tuple[PairedTest, dict[str, Any] | None]:
        """The test of one pair, and its power note when the difference is below the MDD."""
        theta, reps, jack, cv, bv, n_pair = self._difference(s, estimates)
        lo, hi = self._ci(theta, reps, jack)
        z = _z_total(self.alpha)
        if self.kinds[s.metric] == "binary":
            assert s.diff is not None
            joint = ~np.isnan(s.diff)
            scores = self.table.scores[s.metric]
            p, wins, losses = mcnemar_exact(scores[s.candidate][joint], scores[s.baseline][joint])
            mdd = mcnemar_min_detectable(n_pair, wins + losses, self.alpha)
            needed = _items_needed_mcnemar(theta, (wins + losses) / max(n_pair, 1), z)
            test = "mcnemar-exact"
        else:
            p = bootstrap_p(theta, reps)
            se = float(np.nanstd(reps, ddof=1)) if np.isfinite(reps).sum() > 1 else math.nan
            mdd = z * se if math.isfinite(se) else math.nan
            needed = (
                math.ceil(n_pair * (mdd / theta) ** 2) if theta and math.isfinite(mdd) else None
            )
            test = "paired-bootstrap"
        mdd_out = float(mdd) if math.isfinite(mdd) else None
        underpowered = mdd_out is None or abs(theta) < mdd_out
        pair = PairedTest(
            candidate=s.candidate,
            baseline=s.baseline,
            metric=s.metric,
            candidate_value=cv,
            baseline_value=bv,
            diff=theta,
            ci_low=lo,
            ci_high=hi,
            p_value=p,
            test=test,
            n=n_pair,
            min_detectable_diff=mdd_out,
            underpowered=underpowered,
        )
        note = None
        if underpowered:
            note = {
                "candidate": s.candidate,
                "baseline": s.baseline,
                "metric": s.metric,
                "items_needed": needed,
            }
        return pair, note


def _items_needed_mcnemar(diff: float, psi: float, z: float) -> int | None:
    """Items needed to detect ``diff`` with this discordant rate (normal approximation)."""
    if diff == 0 or psi <= 0:
        return None
    return math.ceil(z**2 * psi / diff**2)


def is_stale(comp: Comparison, run: EvalRun) -> bool:
    """True when a saved comparison was not computed from this evaluation (eval rerun since)."""
    meta = comp.meta
    return (
        comp.primary_metric != run.primary_metric
        or meta.get("split_hash") != run.split_hash
        or meta.get("n_items") != len(run.item_ids)
        or set(meta.get("candidates", comp.metrics)) != {c.name for c in run.candidates}
    )


# ----------------------------------------------------------------------------- persistence
# The file format lives with the dataclass (eval/results.py); these names stay for callers.
def save_comparison(comp: Comparison, path: str | Path) -> None:
    comp.save(path)


def load_comparison(path: str | Path) -> Comparison:
    return Comparison.load(path)
