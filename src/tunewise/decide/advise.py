"""The advisor: a plain-language recommendation tied to the measured numbers.

The article's ladder, read off the evaluation: stop at the cheapest rung that nothing above it
clearly beats. ``recommend`` is a pure function of :class:`Facts` (numbers only), so each branch is
unit-tested on synthetic results; ``facts_from_dir`` reads them from a ladder's work directory.

Branches:

1. the gate said ship -> fine-tune, with the method that won and why;
2. otherwise the cheapest rung (prompt, few-shot, RAG) that nothing above it on the ladder clearly
   beats: the prompt is enough, few-shot is enough, or RAG (a knowledge task when it retrieved
   documents: fine-tuning does not reliably add facts);
3. the fine-tune clearly beats all three rungs but the gate refused it (a further gate baseline
   such as kNN, or a guard) -> undecided, with what would decide it.

Whichever branch: when a classifier without an LLM (``knn``, ``tfidf``, ``probe``) scores above
every LLM candidate by the margin, the headline says so ("a classifier without an LLM scores X;
consider it"): it may make the whole ladder unnecessary. Short of the margin, one that scores at
least as high as every fine-tune and is not a gate baseline is named in the reasons.

Alongside: "not enough data yet" when a learning curve (25/50/100% of train) is still rising, with
a log-linear extrapolation of the examples needed; an "evaluation set too small" note when a
difference was underpowered; and a cost comparison with the break-even volume.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunewise.candidates import CHAMPION, CONTEXT_SUFFIXES, NO_LLM
from tunewise.config.gate import GateConfig
from tunewise.decide.costs import CostEstimate, CostInputs, cost_estimate
from tunewise.decide.release import RELEASE_FILE as RELEASE_DECISION
from tunewise.errors import UserError
from tunewise.eval.learning_curve import CURVE_FILE, load_curve
from tunewise.eval.results import (
    COMPARISON_FILE,
    EVAL_FILE,
    VERDICT_FILE,
    Comparison,
    EvalRun,
    Verdict,
)
from tunewise.numbers import num
from tunewise.rungs import RUNGS

# Cheaper to train and serve first: a tie goes to the cheaper method.
METHOD_COST_ORDER = ("qlora", "lora", "full")


@dataclass
class Facts:
    primary_metric: str
    metrics: dict[str, float]  # candidate -> primary metric value
    # (a, b) -> True when a beats b on the primary metric with p < alpha and margin >= delta
    clearly_better: dict[tuple[str, str], bool]
    methods: dict[str, str] = field(default_factory=dict)  # fine-tuned candidate -> lora|qlora|full
    ship: bool = False
    shipped_candidate: str | None = None
    verdict_summary: str = ""
    underpowered: list[str] = field(default_factory=list)  # "cand vs base" pairs too small to tell
    learning_curve: list[tuple[int, float]] = field(
        default_factory=list
    )  # (train examples, metric)
    delta: float = 0.02
    rag_sources: list[str] = field(default_factory=lambda: ["docs"])  # what the rag rung retrieved
    no_llm: tuple[str, ...] = NO_LLM  # candidates that are classifiers without a language model
    # the configured gate.baselines: what the gate held a fine-tune to
    gate_baselines: list[str] = field(default_factory=lambda: list(GateConfig().baselines))
    # fine-tuned candidate -> the retrieved context it was trained with (train.context)
    contexts: dict[str, str] = field(default_factory=dict)
    # the release rule's winner (tunewise.decide.release), when the ladder applied it; "" = none
    released: str | None = None


@dataclass
class Advice:
    recommendation: str  # "prompt" | "fewshot" | "rag" | "finetune" | "undecided"
    method: str | None
    headline: str
    reasons: list[str]
    more_data: str | None = None
    cost: CostEstimate | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def extrapolate(curve: list[tuple[int, float]], target: float) -> int | None:
    """Examples needed to reach ``target``, from a least-squares fit metric = a + b*ln(n).

    None when the curve is not rising (more of the same data will not get there).
    """
    fit = _log_fit(curve)
    if fit is None or fit[1] <= 1e-9:
        return None
    a, b = fit
    needed = math.exp((target - a) / b)
    return max(math.ceil(needed), max(n for n, _ in curve))


def _log_fit(curve: list[tuple[int, float]]) -> tuple[float, float] | None:
    """Least-squares (a, b) of metric = a + b*ln(n); None with fewer than two distinct sizes."""
    pts = [(n, m) for n, m in curve if n > 0]
    if len(pts) < 2:
        return None
    xs = [math.log(n) for n, _ in pts]
    ys = [m for _, m in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


def _best(names: list[str], metrics: dict[str, float]) -> str | None:
    present = [n for n in names if n in metrics]
    return max(present, key=lambda n: metrics[n]) if present else None


def recommend(f: Facts, cost: CostInputs | None = None) -> Advice:
    m = f.metrics
    pm = f.primary_metric
    reasons: list[str] = []
    finetuned = [c for c in m if c not in RUNGS and c in f.methods]
    if (failed := _metric_failed(f, finetuned)) is not None:
        failed.cost = cost_estimate(cost) if cost is not None else None
        return failed

    if f.ship and f.shipped_candidate:
        cand = f.shipped_candidate
        method = f.methods.get(cand)
        held_to = [b for b in f.gate_baselines if b in m]
        reasons.append(
            f"{cand} ({method}) scores {pm} {num(m[cand])}, clearly above every gate baseline: "
            + ", ".join(f"{b} {num(m[b])}" for b in held_to)
            + "."
        )
        ties = [c for c in finetuned if c != cand and abs(m[c] - m[cand]) < f.delta]
        if ties:
            reasons.append(
                "Within the margin of "
                + ", ".join(f"{c} ({f.methods[c]})" for c in ties)
                + f"; {method} is preferred as the cheaper or better of them."
            )
        if method == "qlora":
            reasons.append(
                "QLoRA trains on a 4-bit base: the smallest memory footprint at this quality."
            )
        elif method == "full":
            reasons.append("Full fine-tuning won; it costs a full copy of the weights per version.")
        advice = Advice(
            "finetune",
            method,
            f"Fine-tune with {method}: it clearly beats every gate baseline "
            f"({', '.join(_name(b, short=True) for b in held_to)}).",
            reasons + ([f.verdict_summary] if f.verdict_summary else []),
        )
    else:
        advice = _ladder_rung(f, finetuned)

    # Candidates outside the article's ladder (the kNN label vote over train examples, external
    # models, constrained variants): the branches above rank the rungs only, so say so when one
    # leads, because a label task that an embedding lookup solves may need no generation at all.
    extras = [
        c
        for c in m
        if c not in RUNGS
        and c != CHAMPION  # the production version: judged by the regression check, not here
        and c not in f.methods
        and not _of_finetune(c, f)
        and not math.isnan(m[c])
    ]
    plain = _no_llm_winner(f)
    if plain is not None:
        advice.headline += f" But {plain[0]}"
        advice.reasons.append(plain[1])
        extras = [c for c in extras if c not in f.no_llm]  # said once, above
    top_extra = _best(extras, m)
    others = [c for c in m if c not in extras and not math.isnan(m[c])]
    leads = top_extra is not None and others and m[top_extra] >= max(m[c] for c in others) + f.delta
    if leads:
        advice.reasons.append(_leading_extra(f, top_extra, others))
    said = plain is not None or (leads and top_extra in f.no_llm)  # a no-LLM one, said above
    if not said and (untested := _untested_no_llm_rival(f, finetuned)) is not None:
        advice.reasons.append(untested)
    _add_notes(f, advice)
    if f.learning_curve and advice.recommendation != "finetune":
        advice.more_data = _curve_advice(f, m)
    if cost is not None:
        advice.cost = cost_estimate(cost)
    return advice


def _add_notes(f: Facts, advice: Advice) -> None:
    """The notes every branch ends with: context variants, the release, the sample size."""
    if (note := _context_advice(f)) is not None:
        advice.reasons.append(note)
    if f.released is not None:
        advice.reasons.append(_release_line(f))
    if f.underpowered:
        advice.reasons.append(
            "The evaluation set is too small to detect the observed difference for: "
            + ", ".join(f.underpowered)
            + ". Add validation items before trusting a tie."
        )


def _release_line(f: Facts) -> str:
    """What the release rule shipped, so the advice and the registry say one thing."""
    if not f.released:
        return (
            "Released: nothing (no candidate passed the release rule; see release-decision.json)."
        )
    value = f.metrics.get(f.released)
    score = f" ({f.primary_metric} {num(value)})" if value is not None else ""
    return (
        f"Released: {f.released}{score}, the cheapest candidate that nothing more expensive "
        "clearly beats; it is in production (`tunewise serve`, model NAME@production)."
    )


def _metric_failed(f: Facts, finetuned: list[str]) -> Advice | None:
    """No advice from missing numbers: when the primary metric has no usable value for a rung or
    a fine-tune, a ranking would rest on NaN (every comparison with NaN is False, so the cheapest
    rung would "win"). Say that the metric failed, for which candidates, and what to set."""
    compared = [r for r in RUNGS if r in f.metrics] + finetuned
    missing = [c for c in compared if not math.isfinite(f.metrics[c])]
    if not missing:
        return None
    pm = f.primary_metric
    names = ", ".join(missing)
    why = (
        "the judge's replies could not be read as scores (a judge no stronger than the candidates "
        "often echoes the answer instead of scoring it)"
        if pm == "judge"
        else "no answer could be scored on it"
    )
    return Advice(
        "undecided",
        None,
        f"No recommendation: {pm} has no usable score for {names}.",
        [
            f"The primary metric failed: {why}. No rung or fine-tune is ranked on it.",
            "Set eval.primary_metric to a metric that scores these answers: on free text a "
            "reference metric (chrf, with the chrf grader in eval.graders); for a judge, "
            "eval.judge_model naming a model stronger than the candidates.",
        ],
    )


def _leading_extra(f: Facts, lead: str, others: list[str]) -> str:
    """A candidate outside the ladder's rungs that leads every rung and fine-tune by the margin:
    whether the gate held the fine-tune to it (it is one of the configured gate baselines) or not.
    """
    m = f.metrics
    best_other = _best(others, m)
    assert best_other is not None
    head = (
        f"{lead} scores {f.primary_metric} {num(m[lead])}, above every rung of the ladder "
        f"(best: {best_other} {num(m[best_other])})"
    )
    if lead not in f.gate_baselines:
        return (
            head + ", but it is not a gate baseline, so nothing was required to beat it. Add it "
            "to gate.baselines to hold the fine-tune to it, or consider shipping it instead."
        )
    # it leads every fine-tune by the margin, so none of them can have cleared the gate
    held = (
        "; it is in gate.baselines, so the gate held the fine-tune to it, and no fine-tune beats it"
        if any(c in f.methods for c in m)
        else "; it is in gate.baselines, so a fine-tune will be held to it"
    )
    return head + held + ". It needs no fine-tune: consider shipping it instead."


def _no_llm_winner(f: Facts) -> tuple[str, str] | None:
    """(headline addition, reason) when a classifier without an LLM leads every LLM candidate
    (the rungs, the fine-tunes, constrained and external ones) by at least the gate's margin."""
    m, pm = f.metrics, f.primary_metric
    plain = [c for c in m if c in f.no_llm and not math.isnan(m[c])]
    llm = [c for c in m if c not in f.no_llm and not math.isnan(m[c])]
    best_plain, best_llm = _best(plain, m), _best(llm, m)
    if best_plain is None or best_llm is None or m[best_plain] < m[best_llm] + f.delta:
        return None
    value = num(m[best_plain])
    head = f"a classifier without an LLM scores {pm} {value} ({best_plain}); consider it."
    reason = (
        f"{best_plain} scores {pm} {value}, above every LLM candidate (best: {best_llm} "
        f"{num(m[best_llm])}): a classifier without an LLM scores {value}; consider it. It "
        "trains in seconds on train alone and serves on a CPU without generation."
    )
    if best_plain not in f.gate_baselines:
        reason += (
            " It is not a gate baseline, so nothing was required to beat it: add it to "
            "gate.baselines to hold a fine-tune to it."
        )
    return head, reason


def _untested_no_llm_rival(f: Facts, finetuned: list[str]) -> str | None:
    """A classifier without an LLM that scores at least as high as every fine-tune, short of the
    margin that makes it the headline, and that the gate did not hold the fine-tune to: the
    verdict never tested the two, so a reader could otherwise serve a weaker no-LLM baseline the
    advice names (found on CLINC150: the embedding probe 0.960 beside a fine-tune at 0.953,
    while the advice offered kNN at 0.907)."""
    m = f.metrics
    tuned = _best([c for c in finetuned if not math.isnan(m[c])], m)
    plain = [c for c in m if c in f.no_llm and c not in f.gate_baselines and not math.isnan(m[c])]
    best = _best(plain, m)
    if tuned is None or best is None or m[best] < m[tuned]:
        return None
    return (
        f"{best}, a classifier without an LLM, scores {f.primary_metric} {num(m[best])}, at "
        f"least as high as every fine-tune (best: {tuned} {num(m[tuned])}). It is not a gate "
        "baseline, so the two were not tested against each other: add it to gate.baselines to "
        "hold the fine-tune to it, or consider serving it (it trains in seconds on train alone "
        "and needs no generation)."
    )


def _ladder_rung(f: Facts, finetuned: list[str]) -> Advice:
    """No fine-tune shipped: the cheapest rung that nothing above it on the ladder clearly beats.

    When the fine-tune clearly beats all three rungs and the gate still refused it (a further gate
    baseline such as kNN, or a guard), the answer is "undecided", with what would decide it.
    """
    m, better = f.metrics, f.clearly_better
    rungs = [b for b in RUNGS if b in m]
    refused = _refusal(f)
    if not rungs:
        return Advice(
            "undecided",
            None,
            "No rung of the ladder (prompt, few-shot, RAG) was evaluated.",
            ["Add prompt, fewshot and rag to eval.candidates: the advice compares against them."]
            + ([refused] if finetuned else []),
        )
    chosen = None
    for i, rung in enumerate(rungs):
        if not any(better.get((c, rung), False) for c in rungs[i + 1 :] + finetuned):
            chosen = rung
            break
    if chosen is None:
        return _held_back(f, finetuned, rungs, refused)
    reasons = [_rung_headline(f, chosen, rungs, finetuned)]
    if chosen == "rag":
        reasons.append(_RAG_DOCS if "docs" in f.rag_sources else _RAG_EXAMPLES)
    if finetuned:
        best_ft = _best(finetuned, m)
        assert best_ft is not None
        if not better.get((best_ft, chosen), False):
            reasons.append(
                f"The best fine-tune ({best_ft}, {num(m[best_ft])}) does not clearly beat "
                f"{_name(chosen)}."
            )
        reasons.append(refused)
    headline = {
        "prompt": "The prompt is enough.",
        "fewshot": "Few-shot prompting is enough.",
        "rag": "Use RAG: retrieval carries this task.",
    }[chosen]
    return Advice(chosen, None, headline, reasons)


def _refusal(f: Facts) -> str:
    """Why no fine-tune ships, from the verdict's summary without its own "DON'T SHIP x:" label
    (the line already says so)."""
    cand = f.shipped_candidate or "the fine-tune"
    why = f.verdict_summary.removeprefix(f"DON'T SHIP {cand}:").strip()
    return f"Do not ship {cand}: {why or 'it did not clear the gate.'}"


_RAG_DOCS = (
    "The answers depend on facts in the documents or examples; fine-tuning teaches "
    "behaviour (format, tone, labels, function calls) and does not reliably add facts. Keep the "
    "knowledge in the index, where it can be updated without retraining."
)
_RAG_EXAMPLES = (
    "RAG here retrieves labelled training examples, not documents: the nearest "
    "examples carry the answer. That is not a knowledge task; it says that "
    "similar examples in the prompt (or a kNN over them) do the job, and more "
    "labelled examples make the index better without retraining."
)


def _rung_headline(f: Facts, chosen: str, rungs: list[str], finetuned: list[str]) -> str:
    """The chosen rung's score, the rungs below it it clearly beats, and what does not beat it."""
    m, better = f.metrics, f.clearly_better
    lower = [r for r in rungs[: rungs.index(chosen)] if better.get((chosen, r), False)]
    head = f"{_name(chosen)} scores {f.primary_metric} {num(m[chosen])}"
    head += (
        f", clearly above {' and '.join(f'{_name(r)} ({num(m[r])})' for r in lower)}"
        if lower
        else ""
    )
    above = [c for c in rungs[rungs.index(chosen) + 1 :] + finetuned]
    head += (
        (", and nothing above it on the ladder (" + ", ".join(above) + ") clearly beats it.")
        if above
        else "."
    )
    return head[0].upper() + head[1:]


def _held_back(f: Facts, finetuned: list[str], rungs: list[str], refused: str) -> Advice:
    """A fine-tune clearly beats the top rung, yet the gate refused it: undecided, and why."""
    m, better = f.metrics, f.clearly_better
    cand = _best([c for c in finetuned if better.get((c, rungs[-1]), False)], m)
    assert cand is not None  # only a fine-tune can clearly beat the top rung
    beaten = [r for r in rungs if better.get((cand, r), False)]
    reasons = [
        f"{cand} ({f.methods[cand]}) scores {f.primary_metric} {num(m[cand])}, clearly above "
        + ", ".join(f"{r} {num(m[r])}" for r in beaten)
        + ".",
        refused,
    ]
    # rivals the comparison tested the fine-tune against (gate baselines beyond the three rungs)
    rivals = [
        c
        for c in m
        if c not in RUNGS
        and c not in f.methods
        and not _of_finetune(c, f)
        and (cand, c) in better
        and not better[(cand, c)]
    ]
    for rival in sorted(rivals, key=lambda c: -m[c]):
        reasons.append(
            f"{rival} ({num(m[rival])}) is not clearly beaten and needs no fine-tune: add "
            f"validation items to tell the two apart, or serve {rival} if it is cheaper."
        )
    names = [{"prompt": "prompt", "fewshot": "few-shot", "rag": "RAG"}[r] for r in beaten]
    return Advice(
        "undecided",
        f.methods[cand],
        f"Undecided: {cand} clearly beats {', '.join(names)}, but the gate held it back.",
        reasons,
    )


def _context_advice(f: Facts) -> str | None:
    """When the plain fine-tune (no examples in its prompt) trails the rungs that show examples:
    say so, and point to the context-trained variant (train.context), with its numbers if it
    ran. Retrieval-augmented fine-tuning trains on the prompts those rungs win with."""
    m, pm = f.metrics, f.primary_metric
    shows = [r for r in ("fewshot", "rag") if r in m and (r != "rag" or "train" in f.rag_sources)]
    with_ctx = [
        c for c in f.methods if c in m and (c in f.contexts or c.endswith(CONTEXT_SUFFIXES))
    ]
    plain = _best([c for c in f.methods if c not in with_ctx], m)
    if plain is None or not shows:
        return None
    ahead = [r for r in shows if m[r] >= m[plain] + f.delta]
    if not ahead:
        return None
    rungs = ", ".join(f"{_name(r)} {num(m[r])}" for r in ahead)
    note = (
        f"The plain fine-tune ({plain}, {pm} {num(m[plain])}) trails the rungs that show the "
        f"model labelled examples ({rungs}): it never sees examples in its prompt."
    )
    trained = [c for c in with_ctx if c in f.contexts]
    best = _best(trained, m)
    if best is not None:
        verdict = "clearly above" if f.clearly_better.get((best, plain), False) else "against"
        return note + (
            f" The context-trained {best} (trained on prompts with the same retrieved "
            f"{f.contexts[best]} context) scores {num(m[best])}, {verdict} the plain "
            f"fine-tune's {num(m[plain])}."
        )
    mode = max(ahead, key=lambda r: m[r])
    return note + (
        f" Train it on the prompts that win: train.variants: [none, {mode}] trains "
        f"finetuned+{mode} (retrieval-augmented fine-tuning, train.context: {mode}) beside it and "
        "compares both with every rung on the same items."
    )


def _of_finetune(name: str, f: Facts) -> bool:
    """A candidate derived from a fine-tune (``finetuned+constrained``, ``finetuned+rag``)."""
    return any(name.startswith(ft + "+") for ft in f.methods)


def _name(rung: str, short: bool = False) -> str:
    if short:
        return {"fewshot": "few-shot", "rag": "RAG"}.get(rung, rung)
    return {"prompt": "the prompt alone", "fewshot": "few-shot", "rag": "RAG"}.get(rung, rung)


def _curve_advice(f: Facts, m: dict[str, float]) -> str | None:
    """What the 25/50/100% learning curve says, against the best candidate that is not a fine-tune
    (the three rungs, and kNN or any other reference rung the ladder ran)."""
    rivals = [c for c in m if c not in f.methods and not _of_finetune(c, f)]
    rival = _best(rivals, m)
    if rival is None:
        return None
    target = m[rival] + f.delta
    curve = ", ".join(f"{n}: {num(v)}" for n, v in f.learning_curve)
    have, last = max(f.learning_curve)
    fit = _log_fit(f.learning_curve)
    slope = fit[1] if fit else None
    if slope is None or slope <= 1e-9:
        return (
            f"The learning curve ({curve}) is flat: more of the same data is unlikely to help; "
            "improve the data or the prompt instead."
        )
    per_doubling = (
        f"about {slope * math.log(2):+.3f} {f.primary_metric} per doubling of the training set"
    )
    if last >= target:
        return (
            f"The learning curve ({curve}) is still rising ({per_doubling}): the fine-tune already "
            f"scores above {rival} + margin ({num(target)}), and more examples should widen the "
            "gap. What it lacks is evidence, not data: add validation items so the difference can "
            "be confirmed."
        )
    needed = extrapolate(f.learning_curve, target)
    return (
        f"Not enough data yet: the learning curve ({curve}) is still rising ({per_doubling}); a "
        f"log-linear fit reaches {rival} + margin ({num(target)}) at about {needed} training "
        f"examples (you have {have})."
    )


def facts_from_dir(eval_dir: Path) -> Facts:
    """Read ``comparison.json``, ``verdict.json`` and ``eval.json`` of a ladder's evaluation."""
    comp_path = eval_dir / COMPARISON_FILE
    if not comp_path.is_file():
        raise UserError(
            f"{eval_dir}: no comparison.json; run `tunewise run` or `tunewise compare` first"
        )
    comp = Comparison.load(comp_path)
    pm = comp.primary_metric
    alpha = float(comp.meta.get("alpha", 0.05))
    delta = float(comp.meta.get("delta", 0.02))
    primary_pairs = [p for p in comp.pairs if p.metric == pm]
    methods: dict[str, str] = {}
    contexts: dict[str, str] = {}
    no_llm = NO_LLM
    if (eval_dir / EVAL_FILE).is_file():
        cands = EvalRun.load(eval_dir / EVAL_FILE).candidates
        for c in cands:
            if c.kind in ("finetuned", "pooled"):  # pooled: the mean over training seeds
                methods[c.name] = c.meta.get("method", "lora")
                if c.meta.get("context"):
                    contexts[c.name] = str(c.meta["context"])
        no_llm = tuple(c.name for c in cands if c.kind in ("knn", "classical"))
    verdict = None
    if (eval_dir / VERDICT_FILE).is_file():
        verdict = Verdict.load(eval_dir / VERDICT_FILE)
    released = None
    if (eval_dir / RELEASE_DECISION).is_file():
        released = json.loads((eval_dir / RELEASE_DECISION).read_text()).get("winner") or ""
    curve: list[tuple[int, float]] = []
    if (eval_dir / CURVE_FILE).is_file():
        curve = load_curve(eval_dir / CURVE_FILE)
    return Facts(
        primary_metric=pm,
        metrics={c: per[pm].value for c, per in comp.metrics.items() if pm in per},
        clearly_better={
            (p.candidate, p.baseline): p.p_value < alpha and p.diff >= delta for p in primary_pairs
        },
        methods=methods,
        ship=verdict.ship if verdict else False,
        shipped_candidate=verdict.candidate if verdict else None,
        verdict_summary=verdict.summary if verdict else "",
        underpowered=[
            f"{p.candidate} vs {p.baseline}"
            + (f" (about {n} items would tell)" if (n := comp.items_needed(p)) else "")
            for p in primary_pairs
            if p.underpowered
        ],
        learning_curve=curve,
        delta=delta,
        rag_sources=list(comp.meta.get("retrieval_sources", {}).get("rag", ["docs"])),
        no_llm=no_llm,
        gate_baselines=_gate_baselines(comp.meta, verdict),
        contexts=contexts,
        released=released,
    )


def _gate_baselines(comp_meta: dict[str, Any], verdict: Any) -> list[str]:
    """The baselines the gate was configured with: as saved beside the verdict, else as the
    ladder recorded them in comparison.json, else the baselines the comparison tested."""
    if verdict is not None and isinstance(verdict.gate, dict) and "baselines" in verdict.gate:
        return list(verdict.gate["baselines"])
    for key in ("gate_baselines", "baselines"):
        if key in comp_meta:
            return list(comp_meta[key])
    return list(GateConfig().baselines)
