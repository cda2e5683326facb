"""The release rule: which candidate the ladder ships, whatever kind it is.

The article: start with a prompt; if that is not enough, few-shot; then RAG; only then a
fine-tune; and ship when the win is clear. The advisor already reads the evaluation that way. This
module makes it the rule the registry acts on:

    the cheapest candidate (``gate.release_order``) that nothing more expensive clearly beats on
    the primary metric (paired test p < alpha and a difference >= delta), nor on a guard (a drop
    beyond ``gate.guards``' tolerance against it).

A fine-tune chosen by the rule still needs its own gate verdict to say ship (it carries the
superiority, seed and judge checks); a rung or classifier chosen by it needs, like any new
version, to be not worse than the production version by more than ``gate.regression_margin``
(:func:`tunewise.decide.decisions.with_champion`, the same one-sided test). Candidates that cannot
be released (an external API, label-constrained decoding, which the server does not do) are left
out of the order and the decision says so.

Why a more expensive candidate must *clearly* beat a cheaper one, rather than merely score
higher: a tie on 100 items is not a reason to pay for generation, retrieval or training, and the
statistics of "clearly" are the gate's own, so the two decisions cannot disagree about a pair.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tunewise.baselines.release import RELEASE_KINDS
from tunewise.candidates import CHAMPION, FINETUNED, is_constrained, is_finetune_name
from tunewise.config.gate import GateConfig
from tunewise.decide.decisions import with_champion
from tunewise.decide.superiority import DEFAULT_FORMAT_TOLERANCE, FORMAT_GUARD
from tunewise.eval.results import BaselineReason, Comparison, PairedTest, Verdict
from tunewise.numbers import num, p_value, signed

RELEASE_FILE = "release-decision.json"


@dataclass
class ReleaseDecision:
    """The winner (None: nothing ships) and why, cheapest candidate first."""

    winner: str | None
    verdict: Verdict | None  # the winner's verdict (a fine-tune's gate verdict, else the rule's)
    reasons: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # evaluated but not releasable

    def to_dict(self) -> dict[str, object]:
        return {
            "winner": self.winner,
            "verdict": None if self.verdict is None else self.verdict.to_dict(),
            "reasons": self.reasons,
            "order": self.order,
            "left_out": self.left_out,
        }


def cost_order(
    names: Sequence[str], release_order: Sequence[str], finetunes: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """(releasable candidates cheapest first, evaluated ones that cannot be released).

    ``finetuned`` in the order stands for every fine-tune the gate decided on (``finetunes``; by
    default every fine-tune name but the label-constrained ones), in the order they were
    evaluated (the ladder lists the cheaper method first). A plain run prompted with RAG context
    (``finetuned+rag`` of a run trained without it) is not one: no server builds that prompt."""
    tuned = (
        list(finetunes)
        if finetunes is not None
        else [n for n in names if is_finetune_name(n) and not is_constrained(n)]
    )
    order: list[str] = []
    for entry in release_order:
        if entry == FINETUNED:
            order += [n for n in names if n in tuned and n not in order]
        elif entry in names:
            order.append(entry)
    left = [n for n in names if n not in order and n != CHAMPION]
    return order, left


def _pair(comp: Comparison, a: str, b: str) -> PairedTest | None:
    for p in comp.pairs:
        if p.metric == comp.primary_metric and p.candidate == a and p.baseline == b:
            return p
    return None


def clearly_beats(comp: Comparison, a: str, b: str, alpha: float, delta: float) -> str | None:
    """Why ``a`` clearly beats ``b`` on the primary metric or a guard, or None."""
    p = _pair(comp, a, b)
    if p is not None and math.isfinite(p.p_value) and p.p_value < alpha and p.diff >= delta:
        return (
            f"{a} clearly beats it: {p.metric} {num(p.candidate_value)} vs "
            f"{num(p.baseline_value)} (diff {signed(p.diff)}, p={p_value(p.p_value)}, n={p.n})"
        )
    return None


def guard_loss(comp: Comparison, a: str, b: str, guards: Mapping[str, float]) -> str | None:
    """Why ``b`` loses to ``a`` on a guard metric (a drop beyond its tolerance), or None."""
    for metric, tol in sorted(guards.items()):
        va = comp.metrics.get(a, {}).get(metric)
        vb = comp.metrics.get(b, {}).get(metric)
        if va is None or vb is None or not (math.isfinite(va.value) and math.isfinite(vb.value)):
            continue
        if va.value - vb.value > tol + 1e-9:
            return (
                f"its {metric} {num(vb.value)} is below {a}'s {num(va.value)} by more than {tol:g}"
            )
    return None


def decide_release(
    comp: Comparison, verdicts: Mapping[str, Verdict], gate_cfg: GateConfig
) -> ReleaseDecision:
    """Walk the cost order; the first candidate nothing after it clearly beats is the winner."""
    names = [n for n in comp.metrics if n != CHAMPION]
    order, left = cost_order(names, gate_cfg.release_order, finetunes=list(verdicts))
    if gate_cfg.mode == "non_inferiority":
        return _replacement(comp, verdicts, gate_cfg, order, left)
    guards = {FORMAT_GUARD: DEFAULT_FORMAT_TOLERANCE, **gate_cfg.guards}
    reasons: list[str] = []
    for i, cand in enumerate(order):
        value = comp.metrics[cand].get(comp.primary_metric)
        if value is None or not math.isfinite(value.value):
            reasons.append(f"{cand}: no usable {comp.primary_metric} score; passed over")
            continue
        beaten = _beaten_by(comp, cand, order[i + 1 :], gate_cfg, guards)
        if beaten:
            reasons.append(f"{cand} passed over: {beaten}")
            continue
        return _chosen(comp, cand, order[i + 1 :], verdicts, gate_cfg, reasons, order, left)
    reasons.append("every candidate is clearly beaten by a more expensive one that cannot ship")
    return ReleaseDecision(None, None, reasons, order, left)


def _replacement(
    comp: Comparison,
    verdicts: Mapping[str, Verdict],
    gate_cfg: GateConfig,
    order: list[str],
    left: list[str],
) -> ReleaseDecision:
    """``gate.mode: non_inferiority`` asks one question, whether a fine-tune can replace
    ``gate.reference`` (an API, say) without losing more than the margin: the release is the
    fine-tune the gate shipped, the best on the primary metric, or nothing."""
    passing = [c for c, v in verdicts.items() if v.ship]
    why = f"gate.mode non_inferiority: a fine-tune replaces {gate_cfg.reference} or nothing ships"
    if not passing:
        return ReleaseDecision(None, None, [why, "no fine-tune passed the gate"], order, left)
    pm = comp.primary_metric
    best = max(passing, key=lambda c: comp.metrics[c][pm].value if pm in comp.metrics[c] else 0)
    return ReleaseDecision(best, verdicts[best], [why, verdicts[best].summary], order, left)


def _beaten_by(
    comp: Comparison,
    cand: str,
    dearer: Sequence[str],
    gate_cfg: GateConfig,
    guards: Mapping[str, float],
) -> str | None:
    for other in dearer:
        why = clearly_beats(comp, other, cand, gate_cfg.alpha, gate_cfg.delta)
        why = why or guard_loss(comp, other, cand, guards)
        if why:
            return why
    return None


def _chosen(
    comp: Comparison,
    cand: str,
    dearer: Sequence[str],
    verdicts: Mapping[str, Verdict],
    gate_cfg: GateConfig,
    reasons: list[str],
    order: list[str],
    left: list[str],
) -> ReleaseDecision:
    """The rule stopped at ``cand``: its verdict decides whether it ships."""
    value = num(comp.metrics[cand][comp.primary_metric].value)
    head = (
        f"{cand} ({comp.primary_metric} {value}) is the cheapest candidate that nothing more "
        "expensive clearly beats"
        + (f" ({', '.join(dearer)} do not)" if dearer else " (it is the most expensive)")
    )
    reasons.append(head)
    if cand in verdicts or is_finetune_name(cand):
        verdict = verdicts.get(cand)
        if verdict is None:
            reasons.append(f"{cand} has no gate verdict; nothing ships")
            return ReleaseDecision(None, None, reasons, order, left)
        if not verdict.ship:
            reasons.append(f"the gate refused {cand}: {verdict.summary}")
        return ReleaseDecision(cand if verdict.ship else None, verdict, reasons, order, left)
    if cand not in RELEASE_KINDS:
        reasons.append(f"{cand} cannot be released; nothing ships")
        return ReleaseDecision(None, None, reasons, order, left)
    verdict = rung_verdict(comp, cand, dearer, gate_cfg, head)
    if not verdict.ship:
        reasons.append(verdict.summary)
    return ReleaseDecision(cand if verdict.ship else None, verdict, reasons, order, left)


def rung_verdict(
    comp: Comparison, cand: str, dearer: Sequence[str], gate_cfg: GateConfig, head: str
) -> Verdict:
    """The verdict a released rung or classifier carries into the registry: the rule's reasons
    (one per more expensive candidate, with its paired test), then the champion check."""
    reasons = [_not_beaten_reason(comp, other, cand, gate_cfg.alpha) for other in dearer]
    verdict = Verdict(
        candidate=cand,
        ship=True,
        reasons=reasons,
        guard_failures=[],
        summary=f"SHIP {cand}: {head}",
    )
    return with_champion(verdict, comp, gate_cfg)


def _not_beaten_reason(comp: Comparison, other: str, cand: str, alpha: float) -> BaselineReason:
    p = _pair(comp, other, cand)
    if p is None:
        return BaselineReason(other, True, f"{other}: no paired test against {cand}")
    return BaselineReason(
        other,
        True,
        f"{other} does not clearly beat {cand}: {p.metric} {num(p.candidate_value)} vs "
        f"{num(p.baseline_value)} (diff {signed(p.diff)}, {100 * (1 - alpha):g}% CI "
        f"{signed(p.ci_low)}.."
        f"{signed(p.ci_high)}, p={p_value(p.p_value)}, n={p.n})",
    )
