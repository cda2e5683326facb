"""Decisions beyond "beats every rung": pure functions of a :class:`Comparison`, like gate.py.

**Non-inferiority** (``gate.mode: non_inferiority``): the cheaper-model case. A fine-tune that
replaces a frontier API need not beat it, only be not worse by more than ``gate.margin``. The claim
is one-sided: H0 "candidate - reference <= -margin" is rejected at ``alpha`` by the paired test of
:mod:`tunewise.eval.margin` (its false-claim rate is at most ``alpha`` when the truth sits exactly
on the margin), equivalently the one-sided ``1 - alpha`` lower confidence bound lies above
``-margin``.
The candidate must also beat every ``gate.baselines`` entry as in superiority mode (the article's
rule: if a prompt does as well, ship the prompt) and pass the guards. Each of these claims is a
test at ``alpha`` and all must hold, so the overall false-ship rate stays at ``alpha`` without a
multiple-comparison correction (intersection-union, as in gate.py).

The verdict states the margin, the one-sided bound and, when ``gate.cost`` is set, the cost per
1,000 requests of both sides from the advisor's cost model: the candidate is self-hosted; an
``external`` reference is priced per token, any other one is self-hosted like the candidate.

Nothing here reads or writes a file; the margin tests are computed from the evaluation by
:func:`tunewise.eval.margin.margin_tests` and carried on the comparison.
"""

from __future__ import annotations

import math
from dataclasses import replace

from tunewise.candidates import CHAMPION
from tunewise.config.gate import CostConfig, GateConfig
from tunewise.decide.costs import CostInputs, cost_per_1000
from tunewise.decide.seeds import seed_spread
from tunewise.decide.superiority import failed_guards, superiority
from tunewise.errors import UserError
from tunewise.eval.margin import items_to_show_tie
from tunewise.eval.results import BaselineReason, Comparison, MarginTest, Verdict
from tunewise.numbers import num, p_value, signed

_EPS = 1e-12


def _test_name(t: MarginTest) -> str:
    names = {
        "tango-score-cc": "Tango score test",
        "paired-t": "paired t",
        "no-difference": "no-difference bound",
    }
    return names.get(t.test, t.test)


def margin_reason(
    test: MarginTest | None,
    candidate: str,
    reference: str,
    margin: float,
    alpha: float,
    *,
    claim: str = "not worse than",
) -> BaselineReason:
    """Pass when the one-sided test rejects "worse by ``margin`` or more" at ``alpha``."""
    if test is None:
        return BaselineReason(
            reference,
            False,
            f"{reference}: no margin test of {candidate} against it (evaluate {reference} on the "
            "same items: it must be a candidate of the evaluation)",
        )
    level = f"{100 * (1 - alpha):g}%"
    numbers = (
        f"{test.metric} {num(test.candidate_value)} vs {num(test.reference_value)} "
        f"(diff {signed(test.diff)}, one-sided {level} lower bound {signed(test.lower_bound)}, "
        f"margin {margin:g}, {_test_name(test)} p={p_value(test.p_value)}, n={test.n})"
    )
    if test.n == 0 or not (math.isfinite(test.lower_bound) and math.isfinite(test.p_value)):
        if test.n >= 2 and math.isfinite(test.diff):
            return BaselineReason(
                reference,
                False,
                f"{reference}: every paired difference is {signed(test.diff)}: with no spread the "
                f"paired test cannot bound it, so it is not shown: {numbers}",
            )
        return BaselineReason(reference, False, f"{reference}: no usable score: {numbers}")
    if abs(test.margin - margin) > _EPS or abs(test.alpha - alpha) > _EPS:
        return BaselineReason(
            reference,
            False,
            f"{reference}: the recorded test used margin {test.margin:g} / alpha {test.alpha:g}, "
            f"not the configured {margin:g} / {alpha:g} (rerun `tunewise compare`)",
        )
    passed = test.p_value < alpha and test.lower_bound > -margin - _EPS
    if passed:
        return BaselineReason(
            reference,
            True,
            f"{claim} {reference} by more than {margin:g}: {numbers}; "
            f"bound {signed(test.lower_bound)} > -{margin:g}",
        )
    why = f"bound {signed(test.lower_bound)} <= -{margin:g}"
    tied = test.test == "no-difference" or (test.wins == 0 and test.losses == 0)
    if tied:
        why += (
            f"; it scored the same as {reference} on every item{_same_answers(test)}, and "
            f"{test.n} tied items cannot rule out a drop of {margin:g} "
            f"(about {items_to_show_tie(margin, alpha, test.test)} would)"
        )
    elif test.n < 30:
        why += f"; {test.n} items cannot rule out a drop of {margin:g}"
    return BaselineReason(
        reference, False, f"not shown {claim} {reference} within {margin:g}: {numbers}; {why}"
    )


def _same_answers(test: MarginTest) -> str:
    if test.same_outputs is None:
        return ""
    if test.same_outputs == test.n:
        return " with the very same answer"
    return f" (the very same answer on {test.same_outputs} of {test.n})"


def cost_line(
    cost: CostConfig | None, candidate: str, reference: str, reference_kind: str | None
) -> str:
    """Cost per 1,000 requests of both sides, or how to get it."""
    if cost is None:
        return (
            "cost per 1,000 requests: not compared (set gate.cost: requests_per_day, "
            "tokens_per_request, api_price_per_mtok, gpu_price_per_hour)"
        )
    self_hosted, api = cost_per_1000(CostInputs(**cost.model_dump()))
    if reference_kind == "external":
        ref_cost, how = api, "API"
    else:
        ref_cost, how = self_hosted, "self-hosted"
    verdict = "cheaper" if self_hosted < ref_cost else "not cheaper"
    return (
        f"cost per 1,000 requests: {candidate} ${self_hosted:.2f} (self-hosted) vs {reference} "
        f"${ref_cost:.2f} ({how}): {verdict}"
    )


def decide_non_inferiority(comparison: Comparison, candidate: str, gate_cfg: GateConfig) -> Verdict:
    """Ship when not worse than ``gate.reference`` by the margin, better than every baseline, and
    no guard regressed."""
    reference = gate_cfg.reference
    if not reference:
        raise UserError("gate.mode non_inferiority needs gate.reference (a candidate name)")
    if candidate == reference:
        raise UserError(f"{candidate!r} is gate.reference; gate another candidate against it")
    if candidate not in comparison.metrics:
        have = ", ".join(comparison.metrics)
        raise UserError(f"candidate {candidate!r} is not in the comparison (have: {have})")
    alpha, margin = gate_cfg.alpha, gate_cfg.margin
    test = comparison.margin_test(candidate, reference)
    if test is None and reference not in comparison.metrics:
        ni = BaselineReason(
            reference,
            False,
            f"{reference}: gate.reference is missing from the evaluation (add it to "
            "eval.candidates or eval.external)",
        )
    else:
        ni = margin_reason(test, candidate, reference, margin, alpha)
    reasons = [ni]
    guards_cfg = gate_cfg.model_copy(update={"baselines": [*gate_cfg.baselines, reference]})
    if gate_cfg.baselines:
        sup = superiority(comparison, candidate, gate_cfg)
        reasons += sup.reasons
    guard_failures = failed_guards(comparison, candidate, guards_cfg)
    ship = all(r.passed for r in reasons) and not guard_failures
    costs = cost_line(gate_cfg.cost, candidate, reference, test.reference_kind if test else None)
    primary = comparison.primary_metric
    beaten = [r.baseline for r in reasons[1:]]
    if ship:
        also = f", beats {', '.join(beaten)}" if beaten else ""
        bound = signed(test.lower_bound if test else None)
        summary = (
            f"SHIP {candidate}: not worse than {reference} on {primary} by more than {margin:g} "
            f"(one-sided {100 * (1 - alpha):g}% lower bound {bound}){also}; no guard regressed; "
            f"{costs}"
        )
    else:
        parts = []
        if not ni.passed:
            parts.append(f"not shown within {margin:g} of {reference} on {primary}")
        lost = [r.baseline for r in reasons[1:] if not r.passed]
        if lost:
            parts.append(f"does not clearly beat {', '.join(lost)}")
        if guard_failures:
            parts.append(f"{len(guard_failures)} guard(s) regressed")
        summary = f"DON'T SHIP {candidate}: " + "; ".join(parts) + f"; {costs}"
    return Verdict(
        candidate=candidate,
        ship=ship,
        reasons=reasons,
        guard_failures=guard_failures,
        summary=summary,
    )


# ----------------------------------------------------------------------------- champion/challenger


def regression_reason(
    comparison: Comparison, candidate: str, gate_cfg: GateConfig
) -> BaselineReason | None:
    """The regression check against the production version, when the project has one.

    ``comparison.meta["champion"]`` (``{"candidate": "production", "version": "name:3"}``) says a
    production version exists; it is written by whoever evaluated it. A new version must then be
    shown not worse than it by more than ``gate.regression_margin``: the same one-sided paired test
    as non-inferiority, on the same items. Production existing but not evaluated is a failure, not
    a pass: "no evidence of a regression" is not evidence of no regression.
    """
    champ = comparison.meta.get("champion")
    if not champ:
        return None
    name = str(champ.get("candidate") or CHAMPION)
    label = f"{name} ({champ.get('version', 'version unknown')})"
    if candidate == name:
        if name != CHAMPION:  # production reproduced by this evaluation's own candidate
            return BaselineReason(label, True, f"{candidate} is the production version itself")
        raise UserError(f"{candidate!r} is the production version; gate a new version against it")
    test = comparison.margin_test(candidate, name)
    if test is None:
        return BaselineReason(
            label,
            False,
            f"{label}: the production version was not evaluated on these items; a new version "
            "must be shown not worse than it (rerun `tunewise run` or `tunewise gate`)",
        )
    return margin_reason(test, candidate, label, gate_cfg.regression_margin, gate_cfg.alpha)


def with_champion(verdict: Verdict, comparison: Comparison, gate_cfg: GateConfig) -> Verdict:
    """The verdict, also requiring non-inferiority to the production version when there is one.

    A further test at ``alpha`` that must pass: the intersection-union argument still bounds the
    false-ship rate at ``alpha``.
    """
    reason = regression_reason(comparison, verdict.candidate, gate_cfg)
    if reason is None:
        return verdict
    version = comparison.meta["champion"].get("version")
    champion = {"version": version, "passed": reason.passed, "reason": reason.reason}
    summary = verdict.summary
    if not reason.passed:
        lost = f"not shown within {gate_cfg.regression_margin:g} of {reason.baseline}"
        if verdict.ship:
            summary = f"DON'T SHIP {verdict.candidate}: {lost} (it clears everything else)"
        else:
            summary = f"{summary}; {lost}"
    else:
        summary = f"{summary}; not worse than {reason.baseline}"
    return Verdict(
        candidate=verdict.candidate,
        ship=verdict.ship and reason.passed,
        reasons=[*verdict.reasons, reason],
        guard_failures=verdict.guard_failures,
        summary=summary,
        champion=champion,
    )


# ----------------------------------------------------------------------------- judge calibration
JUDGE_METRIC = "judge"


def judge_reason(comparison: Comparison, gate_cfg: GateConfig) -> BaselineReason | None:
    """Refuse a judge-scored primary metric whose measured agreement with people is too low.

    ``comparison.meta["judge_agreement"]`` lists the rated pairs (see
    :func:`tunewise.eval.calibration.agreement_from_eval`). With none, nothing is measured and the
    gate does not pretend otherwise: it says so and decides on the numbers alone. With some, the
    lowest kappa must reach ``gate.min_judge_kappa``: a metric the judge scores is only as good
    as the judge, and one rated pair where it disagrees with people is enough to doubt it.
    """
    if comparison.primary_metric != JUDGE_METRIC:
        return None
    rated = [
        a
        for a in comparison.meta.get("judge_agreement", [])
        if a.get("kappa") is not None and math.isfinite(a["kappa"])
    ]
    threshold = gate_cfg.min_judge_kappa
    # Kappa is undefined (NaN) when people and judge always pick the same single category: chance
    # agreement is then 1. That is not "no ratings", and the reason must not say so.
    measured = comparison.meta.get("judge_agreement", [])
    one_category = [a for a in measured if (a.get("n") or 0) > 0]
    if not rated and one_category:
        a = one_category[0]
        return BaselineReason(
            "judge calibration",
            True,
            f"judge calibration: agreement with people could not be measured: all {a['n']} "
            f"ratings of {a.get('a')} vs {a.get('b')} (people's and the judge's) fall in one "
            f"category, so Cohen's kappa is undefined (raw agreement "
            f"{num(a.get('raw_agreement'))}); rate items where the answers differ to measure it",
        )
    judge = comparison.meta.get("judge") or {}
    if not rated and judge.get("evidence") is False:
        # A judge no stronger than the candidates decides nothing unless people vouch for it.
        return BaselineReason(
            "judge calibration",
            False,
            f"the judge is not evidence: {judge.get('why')}; rate pairs with `tunewise rate` "
            f"until Cohen's kappa reaches gate.min_judge_kappa {threshold:g}, or set "
            "eval.judge_model to a stronger model (or use a reference metric such as chrf)",
        )
    if not rated:
        return BaselineReason(
            "judge calibration",
            True,
            "judge calibration: no human ratings of these candidates, so the judge's agreement "
            "with people is unmeasured (rate a pair with `tunewise rate` to measure it)",
        )
    worst = min(rated, key=lambda a: a["kappa"])
    numbers = (
        f"Cohen's kappa {worst['kappa']:.2f} (95% CI {num(worst.get('ci_low'))}.."
        f"{num(worst.get('ci_high'))}), raw agreement {num(worst.get('raw_agreement'))}, "
        f"{worst.get('n')} ratings of {worst.get('a')} vs {worst.get('b')}"
    )
    if worst["kappa"] >= threshold:
        return BaselineReason(
            "judge calibration",
            True,
            f"the judge agrees with people: {numbers}; >= gate.min_judge_kappa {threshold:g}",
        )
    return BaselineReason(
        "judge calibration",
        False,
        f"the primary metric is scored by an LLM judge that agrees too little with people: "
        f"{numbers}; below gate.min_judge_kappa {threshold:g}",
    )


def with_judge_check(verdict: Verdict, comparison: Comparison, gate_cfg: GateConfig) -> Verdict:
    """The verdict, refused when the judge scoring its primary metric fails calibration."""
    reason = judge_reason(comparison, gate_cfg)
    if reason is None:
        return verdict
    summary = verdict.summary
    if not reason.passed:
        what = (
            "its judge-scored metric is not evidence (a judge no stronger than the candidates, "
            "not checked against people)"
            if reason.reason.startswith("the judge is not evidence")
            else "its judge-scored metric is not trusted (kappa below gate.min_judge_kappa)"
        )
        if verdict.ship:
            summary = f"DON'T SHIP {verdict.candidate}: {what}"
        else:
            summary = f"{summary}; {what}"
    return replace(
        verdict,
        ship=verdict.ship and reason.passed,
        reasons=[*verdict.reasons, reason],
        summary=summary,
    )


# ----------------------------------------------------------------------------- seed variance
def with_seeds(verdict: Verdict, comparison: Comparison, gate_cfg: GateConfig) -> Verdict:
    """The pooled verdict of a group of seeds, also requiring the worst seed to clear every
    baseline (:mod:`tunewise.decide.seeds`).

    ``comparison.meta["seed_groups"]`` maps the pooled candidate to its seed candidates. The worst
    seed is the one with the lowest primary metric; it gets the same superiority test as the pooled
    candidate, against the same baselines. Both claims must hold, so the false-ship rate stays at
    ``alpha`` (intersection-union). A single seed, or a candidate that is not a group, is left
    as it is.
    """
    members = comparison.meta.get("seed_groups", {}).get(verdict.candidate)
    if not members or len(members) < 2:
        return verdict
    primary = comparison.primary_metric
    spread = seed_spread(comparison, members, primary)
    values = ", ".join(f"{m} {num(v)}" for m, v in spread["values"].items())
    head = (
        f"{len(members)} seeds: {primary} {values} "
        f"(range {num(spread['min'])}..{num(spread['max'])}, sd {num(spread['sd'])})"
    )
    worst = spread["worst"]
    if worst is None:
        reason = BaselineReason("worst seed", False, f"{head}; no seed has a usable score")
    elif not gate_cfg.baselines:
        reason = BaselineReason("worst seed", True, f"{head}; no baselines to clear")
    else:
        w = superiority(comparison, worst, gate_cfg)
        lost = [r.baseline for r in w.reasons if not r.passed]
        if w.ship:
            text = f"{head}; the worst seed ({worst}) also beats {', '.join(gate_cfg.baselines)}"
        else:
            what = f"does not clearly beat {', '.join(lost)}" if lost else "regresses a guard"
            text = f"{head}; the worst seed ({worst}) {what}: " + "; ".join(
                r.reason for r in w.reasons if not r.passed
            )
        reason = BaselineReason("worst seed", w.ship, text)
    summary = verdict.summary
    if verdict.ship and not reason.passed:
        summary = (
            f"DON'T SHIP {verdict.candidate}: the pooled test over {len(members)} seeds passes, "
            f"but the worst seed ({worst}) does not clear every baseline"
        )
    elif verdict.ship:
        summary += f" (pooled over {len(members)} seeds, and the worst seed too)"
    else:
        summary += f" (pooled over {len(members)} seeds)"
    return replace(
        verdict,
        ship=verdict.ship and reason.passed,
        reasons=[*verdict.reasons, reason],
        summary=summary,
    )
