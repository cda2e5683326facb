"""The release rule (#24): the cheapest candidate that nothing more expensive clearly beats on the
primary metric or a guard; a fine-tune also needs its gate verdict, a rung the champion check."""

from __future__ import annotations

import pytest

from tunewise.config import GateConfig
from tunewise.decide.comparison import pairs_to_test
from tunewise.decide.release import cost_order, decide_release
from tunewise.eval.results import (
    BaselineReason,
    Comparison,
    MarginTest,
    MetricEstimate,
    PairedTest,
    Verdict,
)

GATE = GateConfig()


def _est(v: float) -> MetricEstimate:
    return MetricEstimate(v, v - 0.05, v + 0.05, 100)


def _comp(values: dict[str, float], wins: dict[tuple[str, str], float], fmt=None) -> Comparison:
    """Every pair of candidates tested; ``wins`` lists the (dearer, cheaper) pairs with a clear,
    significant difference (p=0.001), every other pair a tie (p=0.5)."""
    metrics = {n: {"accuracy": _est(v)} for n, v in values.items()}
    for n, v in (fmt or {}).items():
        metrics[n]["format_compliance"] = _est(v)
    pairs = []
    names = list(values)
    for a in names:
        for b in names:
            if a == b:
                continue
            diff = values[a] - values[b]
            p = 0.001 if (a, b) in wins else 0.5
            pairs.append(
                PairedTest(
                    a,
                    b,
                    "accuracy",
                    values[a],
                    values[b],
                    diff,
                    diff - 0.05,
                    diff + 0.05,
                    p,
                    "mcnemar-exact",
                    100,
                )
            )
    return Comparison("accuracy", metrics, pairs, meta={"alpha": 0.05, "delta": 0.02})


def _verdict(name: str, ship: bool) -> Verdict:
    return Verdict(name, ship, [BaselineReason("prompt", ship, "x")], [],
                   f"{'SHIP' if ship else 'DON' + chr(39) + 'T SHIP'} {name}")  # fmt: skip


def test_a_classifier_that_nothing_dearer_clearly_beats_is_released() -> None:
    """The ticket demo's shape: TF-IDF 0.957 against LLM rungs <= 0.543 and a fine-tune level
    with it: TF-IDF ships, and its verdict holds one reason per dearer candidate."""
    comp = _comp(
        {"prompt": 0.30, "fewshot": 0.54, "tfidf": 0.957, "finetuned": 0.95},
        wins={("fewshot", "prompt"), ("finetuned", "prompt"), ("finetuned", "fewshot")},
    )
    d = decide_release(comp, {"finetuned": _verdict("finetuned", True)}, GATE)
    assert d.winner == "tfidf" and d.verdict is not None and d.verdict.ship
    assert d.order == ["tfidf", "prompt", "fewshot", "finetuned"]
    assert [r.baseline for r in d.verdict.reasons] == ["prompt", "fewshot", "finetuned"]
    assert "finetuned does not clearly beat tfidf" in d.verdict.reasons[-1].reason
    assert d.verdict.summary.startswith("SHIP tfidf: tfidf (accuracy 0.957) is the cheapest")


def test_a_rung_clearly_beaten_by_a_dearer_one_is_passed_over() -> None:
    comp = _comp(
        {"prompt": 0.3, "fewshot": 0.6, "rag": 0.61},
        wins={("fewshot", "prompt"), ("rag", "prompt")},
    )
    d = decide_release(comp, {}, GATE)
    assert d.winner == "fewshot"
    assert d.reasons[0].startswith("prompt passed over: fewshot clearly beats it")


def test_a_fine_tune_is_released_only_with_its_gate_verdict() -> None:
    comp = _comp(
        {"prompt": 0.3, "fewshot": 0.5, "finetuned": 0.9},
        wins={("fewshot", "prompt"), ("finetuned", "prompt"), ("finetuned", "fewshot")},
    )
    shipped = decide_release(comp, {"finetuned": _verdict("finetuned", True)}, GATE)
    assert shipped.winner == "finetuned" and shipped.verdict.candidate == "finetuned"
    refused = decide_release(comp, {"finetuned": _verdict("finetuned", False)}, GATE)
    assert refused.winner is None
    assert any(r.startswith("the gate refused finetuned") for r in refused.reasons)


def test_a_guard_loss_against_a_dearer_candidate_passes_over_the_cheaper_one() -> None:
    """Level on accuracy, but the cheaper answer breaks the output format far more often."""
    comp = _comp(
        {"prompt": 0.50, "fewshot": 0.51},
        wins=set(),
        fmt={"prompt": 0.70, "fewshot": 0.99},
    )
    d = decide_release(comp, {}, GATE)
    assert d.winner == "fewshot"
    assert "format_compliance 0.700 is below fewshot's 0.990" in d.reasons[0]


def test_unreleasable_candidates_are_left_out_and_said_so() -> None:
    comp = _comp({"prompt": 0.5, "gpt": 0.9, "prompt+constrained": 0.7}, wins={("gpt", "prompt")})
    d = decide_release(comp, {}, GATE)
    assert d.winner == "prompt"  # an external API or label scoring is not a release
    assert d.left_out == ["gpt", "prompt+constrained"]
    order, left = cost_order(["finetuned", "finetuned+constrained", "knn"], GATE.release_order)
    assert order == ["knn", "finetuned"] and left == ["finetuned+constrained"]


def test_a_rung_must_not_regress_from_production() -> None:
    comp = _comp({"prompt": 0.5, "fewshot": 0.52, "production": 0.9}, wins=set())
    comp.meta["champion"] = {"candidate": "production", "version": "t:1"}
    comp.margin_tests = [
        MarginTest(
            "prompt",
            "production",
            "accuracy",
            0.01,
            0.05,
            0.5,
            0.9,
            -0.4,
            -0.47,
            1.0,
            "tango-score-cc",
            100,
        )
    ]
    d = decide_release(comp, {}, GATE)
    assert d.winner is None and d.verdict is not None and not d.verdict.ship
    assert d.verdict.champion["version"] == "t:1" and d.verdict.champion["passed"] is False
    assert "production" not in d.order


def test_production_reproduced_by_a_candidate_passes_its_own_check() -> None:
    comp = _comp({"prompt": 0.5, "tfidf": 0.9}, wins=set())
    comp.meta["champion"] = {"candidate": "tfidf", "version": "t:2"}
    d = decide_release(comp, {}, GATE)
    assert d.winner == "tfidf" and d.verdict.champion["passed"] is True
    assert "tfidf is the production version itself" in d.verdict.champion["reason"]


def test_the_release_order_is_configurable_and_checked() -> None:
    comp = _comp({"tfidf": 0.9, "prompt": 0.5}, wins=set())
    no_classifiers = GateConfig(release_order=["prompt", "fewshot", "rag", "finetuned"])
    assert decide_release(comp, {}, no_classifiers).winner == "prompt"
    with pytest.raises(ValueError):
        GateConfig(release_order=["tfidf", "gpt-4"])


def test_every_releasable_pair_is_tested_dearer_against_cheaper() -> None:
    pairs = pairs_to_test(["prompt", "tfidf", "finetuned"], ["prompt"], GATE.release_order)
    assert ("prompt", "tfidf") in pairs and ("finetuned", "tfidf") in pairs
    assert ("finetuned", "prompt") in pairs  # and the gate's: every candidate vs each baseline


def test_non_inferiority_releases_the_fine_tune_the_gate_shipped() -> None:
    gate = GateConfig(mode="non_inferiority", reference="gpt", baselines=[])
    comp = _comp({"prompt": 0.9, "finetuned": 0.88, "gpt": 0.9}, wins=set())
    d = decide_release(comp, {"finetuned": _verdict("finetuned", True)}, gate)
    assert d.winner == "finetuned"
    assert decide_release(comp, {"finetuned": _verdict("finetuned", False)}, gate).winner is None
