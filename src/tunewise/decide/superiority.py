"""Superiority: beat every baseline. A pure function of the comparison.

A candidate ships only when, on the primary metric, it beats **each** configured baseline with
``p < alpha`` **and** by a margin of at least ``delta``, and no guard metric regresses beyond its
tolerance against the best baseline on that metric. Format compliance is always a guard: a model
that answers better but breaks the output format breaks whatever parses it.

Requiring a significant win against every baseline is an intersection-union test: the overall
false-ship rate stays at ``alpha`` without a multiple-comparison correction, because *all* the
individual tests must reject.

Nothing here reads or writes a file; :func:`tunewise.decide.gate.decide` composes this with the
other decision rules.
"""

from __future__ import annotations

import math

from tunewise.config.gate import GateConfig
from tunewise.errors import UserError
from tunewise.eval.results import BaselineReason, Comparison, PairedTest, Verdict
from tunewise.numbers import num, p_value, signed

FORMAT_GUARD = "format_compliance"
DEFAULT_FORMAT_TOLERANCE = 0.02
_EPS = 1e-9  # float noise must not decide a margin that is exactly delta


def _test_name(pair: PairedTest) -> str:
    return {"mcnemar-exact": "McNemar", "paired-bootstrap": "paired bootstrap"}.get(
        pair.test, pair.test
    )


def _judge_baseline(pair: PairedTest, alpha: float, delta: float) -> BaselineReason:
    numbers = (
        f"{pair.metric} {num(pair.candidate_value)} vs {num(pair.baseline_value)} "
        f"(diff {signed(pair.diff)}, 95% CI {signed(pair.ci_low)}..{signed(pair.ci_high)}, "
        f"{_test_name(pair)} p={p_value(pair.p_value)}, n={pair.n})"
    )
    diff, p = pair.diff, pair.p_value
    if not (math.isfinite(diff) and math.isfinite(p)):
        return BaselineReason(pair.baseline, False, f"{pair.baseline}: no usable score: {numbers}")
    better = diff > 0
    significant = p < alpha
    margin_ok = diff >= delta - _EPS
    if better and significant and margin_ok:
        note = ""
        if pair.underpowered and pair.min_detectable_diff is not None:
            note = (
                f"; note: {pair.n} items give 80% power only for differences >= "
                f"{pair.min_detectable_diff:.3f}, so this margin may be optimistic"
            )
        return BaselineReason(
            pair.baseline,
            True,
            f"beats {pair.baseline}: {numbers}; p < {alpha:g} and margin {signed(diff)} >= delta "
            f"{delta:g}{note}",
        )
    problems = []
    if not better:
        worse = significant and diff < 0
        problems.append("significantly worse" if worse else ("tied" if diff == 0 else "not better"))
    else:
        if not significant:
            problems.append(f"not significant (p={p_value(p)} >= alpha {alpha:g})")
        if not margin_ok:
            problems.append(f"margin {signed(diff)} < delta {delta:g}")
    if not significant and pair.underpowered and pair.min_detectable_diff is not None:
        problems.append(
            f"the eval set is too small to tell: {pair.n} items detect only differences >= "
            f"{pair.min_detectable_diff:.3f} (80% power)"
        )
    return BaselineReason(
        pair.baseline, False, f"does not beat {pair.baseline}: {numbers}; " + "; ".join(problems)
    )


def superiority(comparison: Comparison, candidate: str, gate_cfg: GateConfig) -> Verdict:
    """Beat every baseline: one reason per configured baseline and every failed guard."""
    metrics = comparison.metrics
    primary = comparison.primary_metric
    if candidate not in metrics:
        raise UserError(
            f"candidate {candidate!r} is not in the comparison (have: {', '.join(metrics)})"
        )
    if candidate in gate_cfg.baselines:
        raise UserError(
            f"{candidate!r} is one of the gate's baselines; gate a fine-tuned candidate against "
            "them"
        )
    if not gate_cfg.baselines:
        raise UserError("gate.baselines is empty: the gate needs at least one baseline to beat")
    if primary not in metrics[candidate]:
        raise UserError(f"primary metric {primary!r} was not measured for {candidate!r}")

    alpha, delta = gate_cfg.alpha, gate_cfg.delta
    reasons: list[BaselineReason] = []
    for base in gate_cfg.baselines:
        if base not in metrics:
            reasons.append(
                BaselineReason(
                    base,
                    False,
                    f"{base}: missing from the evaluation; every configured baseline must be "
                    "evaluated (add it to eval.candidates, or remove it from gate.baselines)",
                )
            )
            continue
        pair = comparison.pair(candidate, base, primary)
        if pair is None:
            reasons.append(
                BaselineReason(
                    base,
                    False,
                    f"{base}: no paired test of {candidate} vs {base} on {primary} "
                    f"(rerun `tunewise compare` with {base} among the baselines)",
                )
            )
            continue
        reasons.append(_judge_baseline(pair, alpha, delta))

    guard_failures = failed_guards(comparison, candidate, gate_cfg)
    beaten = [r.baseline for r in reasons if r.passed]
    ship = len(beaten) == len(reasons) and not guard_failures
    if ship:
        summary = (
            f"SHIP {candidate}: beats {', '.join(beaten)} on {primary} "
            f"(p < {alpha:g}, margin >= {delta:g}); no guard regressed"
        )
    else:
        parts = []
        lost = [r.baseline for r in reasons if not r.passed]
        if lost:
            parts.append(f"does not clearly beat {', '.join(lost)} on {primary}")
        if guard_failures:
            parts.append(f"{len(guard_failures)} guard(s) regressed")
        lead = _strongest_lead(comparison, candidate, gate_cfg.baselines, alpha)
        summary = f"DON'T SHIP {candidate}: " + "; ".join(parts + ([lead] if lead else []))
        hint = _rag_hint(comparison, candidate, primary, alpha)
        if hint:
            summary += f". {hint}"
    return Verdict(
        candidate=candidate,
        ship=ship,
        reasons=reasons,
        guard_failures=guard_failures,
        summary=summary,
    )


def failed_guards(comparison: Comparison, candidate: str, gate_cfg: GateConfig) -> list[str]:
    """Every guard metric that dropped beyond its tolerance against the best baseline."""
    guards = dict(gate_cfg.guards)
    guards.setdefault(FORMAT_GUARD, DEFAULT_FORMAT_TOLERANCE)
    cand_metrics = comparison.metrics[candidate]
    failures = []
    for metric, tol in sorted(guards.items()):
        base_values = {
            b: comparison.metrics[b][metric].value
            for b in gate_cfg.baselines
            if b in comparison.metrics
            and metric in comparison.metrics[b]
            and math.isfinite(comparison.metrics[b][metric].value)
        }
        if not base_values:
            continue  # nothing to regress against
        best_base = max(base_values, key=base_values.__getitem__)
        best = base_values[best_base]
        if metric not in cand_metrics or not math.isfinite(cand_metrics[metric].value):
            failures.append(
                f"{metric}: not measured for {candidate} (baselines have it; best {best_base} "
                f"{num(best)})"
            )
            continue
        value = cand_metrics[metric].value
        drop = best - value
        if drop > tol + _EPS:
            failures.append(
                f"{metric}: {num(value)} vs best baseline {best_base} {num(best)} "
                f"(drop {drop:.3f} > tolerance {tol:g})"
            )
    return failures


def _strongest_lead(
    comparison: Comparison, candidate: str, baselines: list[str], alpha: float
) -> str:
    """The strongest baseline and the largest significant gap, for the headline.

    Whichever baseline came first in the list says little; the reader needs to know what beats
    the fine-tune by the most, and by how much. Empty when no baseline is ahead of it.
    """
    primary = comparison.primary_metric
    ahead = [
        pair
        for base in baselines
        if (pair := comparison.pair(candidate, base, primary)) is not None
        and math.isfinite(pair.diff)
        and pair.diff < 0
    ]
    if not ahead:
        return ""
    strongest = min(ahead, key=lambda p: p.diff)  # same items: the largest gap is the top score
    significant = [p for p in ahead if math.isfinite(p.p_value) and p.p_value < alpha]
    text = (
        f"the strongest baseline, {strongest.baseline} ({num(strongest.baseline_value)}), leads by "
        f"{signed(-strongest.diff)}"
    )
    if strongest in significant:
        return text + f" (p={p_value(strongest.p_value)})"
    if not significant:
        return text + " (not significant)"
    widest = min(significant, key=lambda p: p.diff)
    return (
        text + f" (not significant); the largest significant gap is {widest.baseline}'s "
        f"({signed(-widest.diff)}, p={p_value(widest.p_value)})"
    )


def _rag_hint(comparison: Comparison, candidate: str, primary: str, alpha: float) -> str:
    """The article's rule of thumb, when the numbers show it: RAG winning means a facts task.

    Only when RAG retrieved documents: a RAG rung over labelled training examples wins because
    the nearest labelled examples carry the answer, which says nothing about facts.
    """
    sources_of = comparison.meta.get("retrieval_sources", {})
    for pair in comparison.pairs:
        if (
            pair.candidate == candidate
            and pair.metric == primary
            and pair.baseline.startswith("rag")
            and pair.diff < 0
            and pair.p_value < alpha
        ):
            sources = set(
                sources_of.get(pair.baseline, ["docs"])
            )  # unknown (older results): as before
            if "docs" not in sources:
                return (
                    f"{pair.baseline} is significantly better, retrieving labelled "
                    "training examples only: similar examples carry the answer, so a "
                    "nearest-neighbour rung (knn) or similarity-chosen few-shot may be enough; "
                    "this is not evidence of a knowledge task"
                )
            both = (
                " (it also retrieved training examples, which may be what helped)"
                if "train" in sources
                else ""
            )
            return (
                f"{pair.baseline} is significantly better: this looks like a "
                f"knowledge task{both}; fine-tuning teaches behaviour (format, tone, labels, "
                "function calls), RAG supplies facts"
            )
    return ""
