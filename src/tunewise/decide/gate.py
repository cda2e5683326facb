"""The ship decision: a pure function of the comparison.

A candidate ships only when, on the primary metric, it beats **each** configured baseline with
``p < alpha`` **and** by a margin of at least ``delta``, and no guard metric regresses beyond its
tolerance against the best baseline on that metric. Format compliance is always a guard: a model
that answers better but breaks the output format breaks whatever parses it.

Requiring a significant win against every baseline is an intersection-union test: the overall
false-ship rate stays at ``alpha`` without a multiple-comparison correction, because *all* the
individual tests must reject.

``decide`` reads nothing and writes nothing; the CLI saves its :class:`Verdict` as verdict.json.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from tunewise.config import GateConfig
from tunewise.errors import UserError
from tunewise.eval.results import BaselineReason, Comparison, PairedTest, Verdict

FORMAT_GUARD = "format_compliance"
DEFAULT_FORMAT_TOLERANCE = 0.02
_EPS = 1e-9  # float noise must not decide a margin that is exactly delta


def _f(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _s(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.3f}"


def _p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def _test_name(pair: PairedTest) -> str:
    return {"mcnemar-exact": "McNemar", "paired-bootstrap": "paired bootstrap"}.get(
        pair.test, pair.test
    )


def _judge_baseline(pair: PairedTest, alpha: float, delta: float) -> BaselineReason:
    numbers = (
        f"{pair.metric} {_f(pair.candidate_value)} vs {_f(pair.baseline_value)} "
        f"(diff {_s(pair.diff)}, 95% CI {_s(pair.ci_low)}..{_s(pair.ci_high)}, "
        f"{_test_name(pair)} p={_p(pair.p_value)}, n={pair.n})"
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
            f"beats {pair.baseline}: {numbers}; p < {alpha:g} and margin {_s(diff)} >= delta "
            f"{delta:g}{note}",
        )
    problems = []
    if not better:
        worse = significant and diff < 0
        problems.append("significantly worse" if worse else ("tied" if diff == 0 else "not better"))
    else:
        if not significant:
            problems.append(f"not significant (p={_p(p)} >= alpha {alpha:g})")
        if not margin_ok:
            problems.append(f"margin {_s(diff)} < delta {delta:g}")
    if not significant and pair.underpowered and pair.min_detectable_diff is not None:
        problems.append(
            f"the eval set is too small to tell: {pair.n} items detect only differences >= "
            f"{pair.min_detectable_diff:.3f} (80% power)"
        )
    return BaselineReason(
        pair.baseline, False, f"does not beat {pair.baseline}: {numbers}; " + "; ".join(problems)
    )


def decide(comparison: Comparison, candidate: str, gate_cfg: GateConfig) -> Verdict:
    """Ship or not: :func:`superiority`, or non-inferiority to ``gate.reference`` when
    ``gate.mode`` says so (:mod:`tunewise.decide.decisions`); either way also not worse than the
    production version when the comparison carries one (champion/challenger); for a group of
    training seeds, the worst seed must clear the baselines too; and refused when a judge-scored
    primary metric comes from a judge that agrees too little with people."""
    from tunewise.decide import decisions

    if gate_cfg.mode == "non_inferiority":
        verdict = decisions.decide_non_inferiority(comparison, candidate, gate_cfg)
    else:
        verdict = superiority(comparison, candidate, gate_cfg)
    verdict = decisions.with_seeds(verdict, comparison, gate_cfg)
    verdict = decisions.with_champion(verdict, comparison, gate_cfg)
    return decisions.with_judge_check(verdict, comparison, gate_cfg)


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
                f"{_f(best)})"
            )
            continue
        value = cand_metrics[metric].value
        drop = best - value
        if drop > tol + _EPS:
            failures.append(
                f"{metric}: {_f(value)} vs best baseline {best_base} {_f(best)} "
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
        f"the strongest baseline, {strongest.baseline} ({_f(strongest.baseline_value)}), leads by "
        f"{_s(-strongest.diff)}"
    )
    if strongest in significant:
        return text + f" (p={_p(strongest.p_value)})"
    if not significant:
        return text + " (not significant)"
    widest = min(significant, key=lambda p: p.diff)
    return (
        text + f" (not significant); the largest significant gap is {widest.baseline}'s "
        f"({_s(-widest.diff)}, p={_p(widest.p_value)})"
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
                f"knowledge task{both}; fine-tuning teaches behaviour (format, tone, labels), RAG "
                "supplies facts"
            )
    return ""


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


# ----------------------------------------------------------------------------- persistence
# The file format lives with the dataclass (eval/results.py); the gate adds its settings.
def save_verdict(verdict: Verdict, path: str | Path, gate_cfg: GateConfig | None = None) -> None:
    """Write verdict.json, with the gate settings that produced it when given."""
    if gate_cfg is not None:
        verdict = replace(verdict, gate=gate_cfg.model_dump(mode="json"))
    verdict.save(path)


def load_verdict(path: str | Path) -> Verdict:
    return Verdict.load(path)
