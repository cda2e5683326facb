"""Champion/challenger: the regression rule against the production version, on constructed
comparisons (ties, tiny samples, a production version that was not evaluated)."""

from __future__ import annotations

import numpy as np
import pytest

from tunewise.candidates import CHAMPION
from tunewise.config import GateConfig
from tunewise.decide.decisions import regression_reason
from tunewise.decide.gate import decide, load_verdict, save_verdict
from tunewise.errors import UserError
from tunewise.eval.margin import margin_tests
from tunewise.eval.results import CandidateResult, Comparison, EvalRun, ItemResult
from tunewise.eval.stats import compare

GATE = GateConfig(baselines=["prompt"])  # regression_margin 0.01 by default


def _run(cols: dict[str, list[int]]) -> EvalRun:
    n = len(next(iter(cols.values())))
    ids = [f"q{i}" for i in range(n)]
    cands = [
        CandidateResult(
            name,
            "finetuned",
            [
                ItemResult(ids[i], str(v), {"accuracy": float(v), "format_compliance": 1.0})
                for i, v in enumerate(vals)
            ],
        )
        for name, vals in cols.items()
    ]
    return EvalRun("p", "val", "h", "accuracy", ids, cands)


def _comparison(cols: dict[str, list[int]], *, champion: bool = True) -> Comparison:
    run = _run(cols)
    comp = compare(run, baselines=["prompt"], n_boot=500)
    if champion:
        comp.meta["champion"] = {"candidate": CHAMPION, "version": "bot:3"}
        comp.margin_tests = margin_tests(run, ["new"], CHAMPION, 0.01, 0.05)
    return comp


def test_no_production_version_means_no_regression_check() -> None:
    comp = _comparison({"prompt": [0] * 100, "new": [1] * 100}, champion=False)
    assert regression_reason(comp, "new", GATE) is None
    v = decide(comp, "new", GATE)
    assert v.ship and v.champion is None and len(v.reasons) == 1


def test_a_challenger_identical_on_many_items_is_not_a_regression() -> None:
    # a tie: the same 600 answers; 600 items rule out a drop of 0.01
    same = [1] * 450 + [0] * 150
    comp = _comparison({"prompt": [0] * 600, CHAMPION: same, "new": same})
    v = decide(comp, "new", GATE)
    assert v.ship and v.champion == {
        "version": "bot:3",
        "passed": True,
        "reason": v.reasons[-1].reason,
    }
    assert v.reasons[-1].baseline == "production (bot:3)"
    assert "not worse than production (bot:3) by more than 0.01" in v.reasons[-1].reason
    assert v.summary.endswith("; not worse than production (bot:3)")


def test_a_tie_on_a_tiny_sample_cannot_rule_out_a_regression() -> None:
    comp = _comparison({"prompt": [0] * 12, CHAMPION: [1] * 12, "new": [1] * 12})
    v = decide(comp, "new", GATE.model_copy(update={"alpha": 0.05}))
    assert not v.ship and v.champion is not None and v.champion["passed"] is False
    assert "12 tied items cannot rule out a drop of 0.01 (about 446 would)" in v.champion["reason"]
    # it beat the rung, and the verdict says the production check is what stopped it
    assert v.reasons[0].passed
    assert v.summary.startswith("DON'T SHIP new: not shown within 0.01 of production (bot:3)")


def test_a_real_regression_is_caught_even_when_the_rungs_are_beaten() -> None:
    rng = np.random.default_rng(0)
    champ = (rng.random(400) < 0.9).astype(int).tolist()
    new = [c if i % 10 else 0 for i, c in enumerate(champ)]  # loses ~9% of what production had
    comp = _comparison({"prompt": [0] * 400, CHAMPION: champ, "new": new})
    v = decide(comp, "new", GATE)
    assert v.reasons[0].passed and not v.ship
    assert "bound" in v.champion["reason"] and "<= -0.01" in v.champion["reason"]


def test_production_known_but_not_evaluated_fails() -> None:
    comp = _comparison({"prompt": [0] * 100, "new": [1] * 100}, champion=False)
    comp.meta["champion"] = {"candidate": CHAMPION, "version": "bot:3"}
    v = decide(comp, "new", GATE)
    assert not v.ship and "was not evaluated on these items" in v.champion["reason"]
    with pytest.raises(UserError, match="is the production version"):
        regression_reason(comp, CHAMPION, GATE)


def test_non_inferiority_mode_also_checks_production_and_the_record_round_trips(tmp_path) -> None:
    same = [1] * 500 + [0] * 100
    run = _run({"api": same, CHAMPION: same, "new": same})
    comp = compare(run, baselines=[], n_boot=500)
    comp.meta["champion"] = {"candidate": CHAMPION, "version": "bot:3"}
    comp.margin_tests = margin_tests(run, ["new"], CHAMPION, 0.01, 0.05) + margin_tests(
        run, ["new"], "api", 0.02, 0.05
    )
    cfg = GateConfig(mode="non_inferiority", reference="api", margin=0.02, baselines=[])
    v = decide(comp, "new", cfg)
    assert v.ship and [r.baseline for r in v.reasons] == ["api", "production (bot:3)"]
    save_verdict(v, tmp_path / "verdict.json", cfg)
    assert load_verdict(tmp_path / "verdict.json").champion == v.champion


def test_side_by_side_lists_the_items_that_flipped() -> None:
    from tunewise.eval.flips import side_by_side

    run = _run({CHAMPION: [1, 1, 0, 0, 1, 1], "new": [1, 0, 1, 1, 1, 1]})
    run.candidate("new").items[5].scores["accuracy"] = float("nan")
    view = side_by_side(run, "new", CHAMPION, "accuracy")
    assert (view["n"], view["unchanged"], view["unscored"]) == (5, 2, 1)
    assert [r["item_id"] for r in view["gained"]] == ["q2", "q3"]
    assert [r["item_id"] for r in view["lost"]] == ["q1"]
    assert view["lost"][0]["champion_output"] == "1" and view["lost"][0]["challenger_output"] == "0"
    assert view["champion_value"] == pytest.approx(4 / 6) and view["challenger_value"] == 0.8
    assert len(side_by_side(run, "new", CHAMPION, "accuracy", limit=1)["gained"]) == 1
