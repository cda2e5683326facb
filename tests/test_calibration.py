"""Judge calibration: kappa and its CI, position bias, and the gate's refusal of a judge-scored
primary metric that agrees too little with people (constructed comparisons)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from typer.testing import CliRunner

from tunewise.config import GateConfig
from tunewise.decide.gate import decide
from tunewise.eval import calibration as cal
from tunewise.eval.human import DB_NAME, RatingStore
from tunewise.eval.results import CandidateResult, Comparison, EvalRun, ItemResult


def test_kappa_matches_scikit_learn_and_its_edges() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.choice(cal.CATEGORIES, 50).tolist()
        y = [v if rng.random() < 0.6 else str(rng.choice(cal.CATEGORIES)) for v in x]
        assert cal.cohen_kappa(x, y) == pytest.approx(cohen_kappa_score(x, y))
    assert cal.cohen_kappa(["a", "b", "tie"], ["a", "b", "tie"]) == 1.0
    assert math.isnan(cal.cohen_kappa(["a", "a"], ["a", "a"]))  # chance agreement is 1
    assert math.isnan(cal.cohen_kappa([], []))


def test_agreement_ci_resamples_items_with_all_their_raters() -> None:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(60):
        truth = str(rng.choice(["a", "b"]))
        judge = truth if rng.random() < 0.8 else ("b" if truth == "a" else "a")
        rows += [(f"q{i}", truth, judge), (f"q{i}", truth, judge)]  # two raters who agree
    out = cal.agreement(rows, n_boot=500)
    assert out["n"] == 120 and out["n_items"] == 60
    assert out["ci_low"] < out["kappa"] < out["ci_high"]
    assert out["raw_agreement"] == pytest.approx(np.mean([h == j for _, h, j in rows]))
    # duplicated rows must not narrow the interval as if they were independent items
    single = cal.agreement(rows[::2], n_boot=500)
    width = out["ci_high"] - out["ci_low"]
    assert width == pytest.approx(single["ci_high"] - single["ci_low"], rel=0.3)
    tiny = cal.agreement([("q0", "a", "a")])
    assert math.isnan(tiny["ci_low"]) and tiny["n_items"] == 1


def test_position_flips() -> None:
    first_always = cal.position_flips(["a", "a", "a", None], ["a", "a", "a", "b"])
    assert first_always == {"flip_share": 1.0, "n": 3, "unparsed": 1, "first_position_wins": 3}
    consistent = cal.position_flips(["a", "b", "tie"], ["b", "a", "tie"])
    assert consistent["flip_share"] == 0.0 and consistent["first_position_wins"] == 0
    assert math.isnan(cal.position_flips([None], ["a"])["flip_share"])
    assert cal.judge_preference(0.75, 0.5) == "a" and cal.judge_preference(0.5, 0.5) == "tie"
    assert cal.judge_preference(float("nan"), 0.5) is None


def _run(judge_a: list[float], judge_b: list[float]) -> EvalRun:
    ids = [f"q{i}" for i in range(len(judge_a))]

    def cand(name: str, scores: list[float]) -> CandidateResult:
        items = [
            ItemResult(i, f"{name} answer {i}", {"judge": s, "accuracy": 1.0})
            for i, s in zip(ids, scores, strict=True)
        ]
        return CandidateResult(name, "finetuned", items)

    return EvalRun("p", "val", "h", "judge", ids, [cand("lora", judge_a), cand("prompt", judge_b)])


def _rate(db: Path, choices: list[str]) -> None:
    store = RatingStore(db)
    for i, c in enumerate(choices):
        store.record("lora", "prompt", f"q{i}", "ann", "a", c)
    store.close()


def test_agreement_from_eval_reads_judge_scores_and_ratings(tmp_path: Path) -> None:
    run = _run([1.0, 0.5, 0.75, 0.25, float("nan")], [0.5, 0.5, 0.25, 0.75, 0.5])
    _rate(tmp_path / DB_NAME, ["a", "tie", "a", "a", "b"])  # the judge says a, tie, a, b, (NaN)
    [out] = cal.agreement_from_eval(run, tmp_path / DB_NAME)
    assert (out["a"], out["b"], out["n"]) == ("lora", "prompt", 4)  # the unscored item drops out
    assert out["raw_agreement"] == 0.75
    assert cal.agreement_from_eval(run, tmp_path / "none.sqlite") == []


def _comp(agreement: list[dict] | None, primary: str = "judge") -> Comparison:
    from tunewise.eval.results import MetricEstimate, PairedTest

    est = {primary: MetricEstimate(0.8, 0.7, 0.9, 200)}
    pair = PairedTest("lora", "prompt", primary, 0.8, 0.5, 0.3, 0.2, 0.4, 0.001, "boot", 200)
    meta = {} if agreement is None else {"judge_agreement": agreement}
    low = {primary: MetricEstimate(0.5, 0.4, 0.6, 200)}
    return Comparison(primary, {"lora": est, "prompt": low}, [pair], meta)


GATE = GateConfig(baselines=["prompt"])


def _kappa(k: float, n: int = 80) -> dict:
    return {"a": "lora", "b": "prompt", "kappa": k, "ci_low": k - 0.1, "ci_high": k + 0.1,
            "raw_agreement": 0.7, "n": n}  # fmt: skip


def test_gate_refuses_a_judge_that_disagrees_with_people() -> None:
    v = decide(_comp([_kappa(0.21)]), "lora", GATE)
    assert not v.ship and v.reasons[0].passed  # it beat the baseline; the judge is the problem
    last = v.reasons[-1]
    assert not last.passed and "Cohen's kappa 0.21 (95% CI 0.110..0.310)" in last.reason
    assert "below gate.min_judge_kappa 0.4" in last.reason
    assert v.summary.startswith("DON'T SHIP lora: its judge-scored metric is not trusted")


def test_gate_accepts_a_calibrated_judge_and_says_when_it_is_unmeasured() -> None:
    ok = decide(_comp([_kappa(0.62), _kappa(float("nan"))]), "lora", GATE)
    assert ok.ship and "the judge agrees with people" in ok.reasons[-1].reason
    # the worst rated pair decides
    assert not decide(_comp([_kappa(0.62), _kappa(0.3)]), "lora", GATE).ship
    unmeasured = decide(_comp(None), "lora", GATE)
    assert (
        unmeasured.ship and "agreement with people is unmeasured" in unmeasured.reasons[-1].reason
    )
    # a stricter threshold, and a primary metric the judge does not score
    strict = GATE.model_copy(update={"min_judge_kappa": 0.7})
    assert not decide(_comp([_kappa(0.62)]), "lora", strict).ship
    acc = decide(_comp([_kappa(0.1)], primary="accuracy"), "lora", GATE)
    assert acc.ship and len(acc.reasons) == 1


def test_kappa_undefined_by_one_category_is_not_called_missing_ratings() -> None:
    # people and judge both always said "a": perfect agreement, kappa undefined (NaN)
    from tunewise.eval.calibration import agreement

    rows = [(f"q{i}", "a", "a") for i in range(12)]
    measured = agreement(rows, n_boot=50)
    assert math.isnan(measured["kappa"]) and measured["raw_agreement"] == 1.0
    v = decide(_comp([{"a": "lora", "b": "prompt", **measured}]), "lora", GATE)
    last = v.reasons[-1].reason
    assert v.ship and v.reasons[-1].passed  # the decision is unchanged: not refused
    assert "no human ratings" not in last and "unmeasured" not in last
    assert "could not be measured: all 12 ratings of lora vs prompt" in last
    assert "fall in one category" in last and "raw agreement 1.000" in last


@dataclass
class _Reply:
    text: str


class _FirstWins:
    """A pairwise judge with pure position bias: whatever is shown first wins."""

    def generate(self, requests, *, progress=False):
        return [_Reply("Winner: A") for _ in requests]


def test_calibrate_measures_position_bias_and_writes_the_file(tmp_path: Path, monkeypatch) -> None:
    from tunewise.cli import app

    run = _run([1.0, 0.5, 0.75, 0.25], [0.5, 0.5, 0.25, 0.75])
    run.save(tmp_path / "eval.json")
    _rate(tmp_path / DB_NAME, ["a", "tie", "a", "skip"])
    result = cal.run_calibration(run, tmp_path / DB_NAME, _FirstWins(), judge_name="fake")
    [pair] = result["pairs"]
    assert pair["position_bias"]["flip_share"] == 1.0 and pair["position_bias"]["n"] == 3
    # both orders disagree on every item, so the order-debiased pairwise verdict is "tie"
    assert pair["pairwise_agreement"]["raw_agreement"] == pytest.approx(1 / 3)
    assert pair["rubric_agreement"]["raw_agreement"] == 1.0

    (tmp_path / "project.yaml").write_text("name: p\ndata: {train: t.jsonl}\n")
    monkeypatch.setattr(cal, "judge_backend", lambda cfg: (_FirstWins(), "fake"))
    r = CliRunner().invoke(app, ["calibrate", str(tmp_path), "-p", str(tmp_path / "project.yaml")])
    assert r.exit_code == 0, r.output
    assert "flip when swapped 100% of 3" in r.output
    saved = json.loads((tmp_path / cal.CALIBRATION_FILE).read_text())
    assert saved["judge"] == "fake" and saved["pairs"][0]["position_bias"]["flip_share"] == 1.0

    from tunewise.decide.report_inputs import render_report as render

    _, md = render(tmp_path)
    assert "judge flips when swapped" in md.read_text() and "1.00 of 3" in md.read_text()


def test_a_base_model_judge_is_flagged_in_the_verdict_and_does_not_ship() -> None:
    weak = _comp(None)
    weak.meta["judge"] = {
        "model": "smollm2-135m-instruct",
        "evidence": False,
        "why": "eval.judge_model is not set: the base model judges itself",
    }
    v = decide(weak, "lora", GATE)
    assert v.reasons[0].passed  # the numbers alone would ship it
    assert not v.ship
    assert "the judge is not evidence: eval.judge_model is not set" in v.reasons[-1].reason
    assert (
        v.summary == "DON'T SHIP lora: its judge-scored metric is not evidence (a judge no "
        "stronger than the candidates, not checked against people)"
    )
    # People's ratings can vouch for it: kappa at the threshold ships it again.
    weak.meta["judge_agreement"] = [_kappa(0.62)]
    assert decide(weak, "lora", GATE).ship
    # A stronger judge is evidence on its own, as before.
    weak.meta = {"judge": {"model": "api", "evidence": True, "why": "an external endpoint"}}
    assert decide(weak, "lora", GATE).ship
