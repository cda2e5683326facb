"""Statistics: bootstrap CIs, exact McNemar, paired bootstrap, power, and input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from _evalfakes import binary_run, make_run
from tunewise.errors import UserError
from tunewise.eval import stats
from tunewise.eval.results import EvalRun, ItemResult

BASES = ["prompt", "fewshot", "rag"]


def test_estimates_and_pairs_cover_every_metric():
    run = make_run({"prompt": 0.5, "fewshot": 0.55, "rag": 0.6, "lora": 0.8}, n=300)
    comp = stats.compare(run, baselines=BASES, n_boot=1000)
    assert set(comp.metrics) == {"prompt", "fewshot", "rag", "lora"}
    for per in comp.metrics.values():
        assert set(per) == {"accuracy", "format_compliance", "judge", "macro_f1"}
        for est in per.values():
            assert est.ci_low <= est.value + 1e-12 and est.value <= est.ci_high + 1e-12
    # only non-baseline candidates are tested, against every baseline, on every metric
    assert {(p.candidate, p.baseline) for p in comp.pairs} == {("lora", b) for b in BASES}
    assert len(comp.pairs) == 3 * 4
    acc = comp.pair("lora", "prompt", "accuracy")
    assert acc.test == "mcnemar-exact" and acc.p_value < 1e-6 and acc.diff > 0.2
    assert acc.ci_low > 0
    assert comp.pair("lora", "prompt", "judge").test == "paired-bootstrap"
    assert comp.pair("lora", "prompt", "macro_f1").test == "paired-bootstrap"
    assert comp.meta["metric_kinds"]["accuracy"] == "binary"
    assert comp.meta["metric_kinds"]["judge"] == "continuous"


def test_mean_matches_numpy_and_ci_brackets_truth():
    run = make_run({"prompt": 0.5, "lora": 0.7}, n=400, seed=3)
    comp = stats.compare(run, baselines=["prompt"], n_boot=2000)
    acc = [it.scores["accuracy"] for it in run.candidate("lora").items]
    est = comp.metrics["lora"]["accuracy"]
    assert est.value == pytest.approx(np.mean(acc))
    # the CI half-width is close to the binomial standard error * 1.96
    se = math.sqrt(est.value * (1 - est.value) / 400)
    assert (est.ci_high - est.ci_low) / 2 == pytest.approx(1.96 * se, rel=0.15)


@pytest.mark.parametrize("method", ["bca", "percentile"])
def test_ci_agrees_with_scipy_bootstrap(method):
    rng = np.random.default_rng(7)
    x = rng.exponential(size=150)  # skewed: BCa and percentile differ here
    b = stats._Bootstrap(len(x))
    key = b.add_mean(x)
    b.run(20000, seed=1)
    ours = stats.bootstrap_ci(b.theta[key], b.boot[key], b.jack[key], method=method)
    ref = sps.bootstrap(
        (x,), np.mean, n_resamples=20000, method=method, random_state=2
    ).confidence_interval
    assert ours[0] == pytest.approx(ref.low, abs=0.02)
    assert ours[1] == pytest.approx(ref.high, abs=0.02)


def test_macro_f1_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    run = make_run({"prompt": 0.4, "lora": 0.8}, n=250, seed=5)
    # one unparseable prediction: a miss for its gold class, not a class of its own
    run.candidate("lora").items[0].predicted = None
    run.candidate("prompt").items[1].predicted = "an_invented_label"
    comp = stats.compare(run, baselines=["prompt"], n_boot=500)
    for name in ("prompt", "lora"):
        items = run.candidate(name).items
        gold = [it.gold for it in items]
        pred = [it.predicted if it.predicted is not None else "<none>" for it in items]
        labels = sorted(set(gold))  # the gold classes: invented or unparseable answers are misses
        expected = metrics.f1_score(gold, pred, labels=labels, average="macro", zero_division=0)
        assert comp.metrics[name]["macro_f1"].value == pytest.approx(expected)


@pytest.mark.parametrize("method", ["bca", "percentile"])
def test_macro_f1_ci_contains_the_estimate_when_labels_are_invented(method):
    # Found on CLINC150: few-shot invented ~30 one-off labels; counted as classes, the bootstrap
    # replicates sat above the estimate and the BCa interval collapsed to [0.369, 0.370] around
    # an estimate of 0.383.
    run = make_run({"fewshot": 0.75, "lora": 0.9}, n=150, seed=3)
    for i, it in enumerate(run.candidate("fewshot").items):
        if not it.scores["accuracy"]:
            it.predicted = f"invented_{i}"
    comp = stats.compare(run, baselines=["fewshot"], n_boot=2000, ci_method=method)
    for name in ("fewshot", "lora"):
        e = comp.metrics[name]["macro_f1"]
        assert e.ci_low < e.value < e.ci_high and e.ci_high - e.ci_low > 0.03, (name, e)


def test_mcnemar_exact_counts_only_discordant_pairs():
    # 10 items where lora wins, 2 where it loses, 88 concordant
    lora = [1] * 10 + [0] * 2 + [1] * 44 + [0] * 44
    base = [0] * 10 + [1] * 2 + [1] * 44 + [0] * 44
    comp = stats.compare(
        binary_run({"prompt": base, "lora": lora}), baselines=["prompt"], n_boot=500
    )
    pair = comp.pair("lora", "prompt", "accuracy")
    assert pair.p_value == pytest.approx(sps.binomtest(10, 12, 0.5).pvalue)
    assert pair.diff == pytest.approx(0.08)
    assert pair.n == 100


def test_identical_candidates_tie_with_p_one():
    col = [1, 0] * 30
    comp = stats.compare(
        binary_run({"prompt": col, "lora": list(col)}), baselines=["prompt"], n_boot=500
    )
    pair = comp.pair("lora", "prompt", "accuracy")
    assert pair.diff == 0 and pair.p_value == 1.0
    assert (pair.ci_low, pair.ci_high) == (0.0, 0.0)
    assert pair.underpowered  # a tie on 60 items says nothing about equality


def test_small_set_is_flagged_underpowered():
    # 10 items: even 5 wins out of 5 discordant pairs is p = 0.0625
    comp = stats.compare(
        binary_run({"prompt": [0] * 5 + [1] * 5, "lora": [1] * 10}),
        baselines=["prompt"],
        n_boot=500,
    )
    pair = comp.pair("lora", "prompt", "accuracy")
    assert pair.p_value == pytest.approx(0.0625)
    assert pair.underpowered
    assert pair.min_detectable_diff >= 0.6  # needs at least 6 one-way discordant pairs of 10
    assert comp.meta["underpowered"][0]["items_needed"] > 10


def test_large_clear_win_is_not_underpowered():
    run = make_run({"prompt": 0.4, "lora": 0.8}, n=500)
    pair = stats.compare(run, baselines=["prompt"], n_boot=500).pair("lora", "prompt", "accuracy")
    assert not pair.underpowered and pair.min_detectable_diff < pair.diff


def test_min_detectable_diff_shrinks_with_n():
    small = stats.mcnemar_min_detectable(50, 15, 0.05)
    large = stats.mcnemar_min_detectable(5000, 1500, 0.05)
    assert large < small / 5
    assert stats.mcnemar_min_detectable(100, 0, 0.05) == pytest.approx(6 / 100)


def test_judge_nan_is_counted_not_dropped_silently():
    run = make_run({"prompt": 0.5, "lora": 0.7}, n=200, judge_nan={"lora": 0.25})
    comp = stats.compare(run, baselines=["prompt"], n_boot=500)
    nan_n = sum(math.isnan(it.scores["judge"]) for it in run.candidate("lora").items)
    assert nan_n > 20
    assert comp.meta["nan_counts"]["lora"]["judge"] == nan_n
    assert comp.metrics["lora"]["judge"].n == 200 - nan_n
    assert comp.pair("lora", "prompt", "judge").n == 200 - nan_n
    assert math.isfinite(comp.metrics["lora"]["judge"].value)


def test_missing_items_are_an_error():
    run = make_run({"prompt": 0.5, "lora": 0.7}, n=50)
    del run.candidate("lora").items[7]
    with pytest.raises(UserError, match=r"'lora': 1 of 50 items missing.*item-0007"):
        stats.compare(run, baselines=["prompt"], n_boot=200)


def test_foreign_and_duplicate_items_are_errors():
    run = make_run({"prompt": 0.5, "lora": 0.7}, n=20)
    run.candidate("lora").items.append(ItemResult(item_id="stranger", output="", scores={}))
    with pytest.raises(UserError, match="not in the evaluation"):
        stats.compare(run, baselines=["prompt"], n_boot=200)
    run = make_run({"prompt": 0.5, "lora": 0.7}, n=20)
    run.candidate("lora").items[1] = run.candidate("lora").items[0]
    with pytest.raises(UserError, match="duplicate"):
        stats.compare(run, baselines=["prompt"], n_boot=200)


def test_missing_baseline_is_recorded():
    run = make_run({"prompt": 0.5, "lora": 0.7}, n=40)
    comp = stats.compare(run, baselines=BASES, n_boot=200)
    assert comp.meta["missing_baselines"] == ["fewshot", "rag"]
    assert comp.pair("lora", "rag", "accuracy") is None


def test_seeded_and_consistent_across_metrics():
    run = make_run({"prompt": 0.5, "lora": 0.7}, n=120)
    a = stats.compare(run, baselines=["prompt"], n_boot=800, seed=11)
    b = stats.compare(run, baselines=["prompt"], n_boot=800, seed=11)
    c = stats.compare(run, baselines=["prompt"], n_boot=800, seed=12)
    assert a.metrics == b.metrics and a.pairs == b.pairs
    assert (
        a.metrics["lora"]["accuracy"].ci_low != c.metrics["lora"]["accuracy"].ci_low
        or a.metrics["lora"]["judge"].ci_low != c.metrics["lora"]["judge"].ci_low
    )
    # the same resample feeds every metric: accuracy and a metric identical to it get equal CIs
    for it in run.candidate("lora").items:
        it.scores["copy"] = it.scores["accuracy"]
    d = stats.compare(run, baselines=["prompt"], n_boot=800, seed=11)
    assert d.metrics["lora"]["copy"] == d.metrics["lora"]["accuracy"]


def test_json_roundtrip_turns_nan_into_null(tmp_path):
    run = make_run({"prompt": 0.5, "lora": 0.7}, n=30, judge_nan={"lora": 1.0})
    comp = stats.compare(run, baselines=["prompt"], n_boot=200)
    assert math.isnan(comp.metrics["lora"]["judge"].value)
    path = tmp_path / "comparison.json"
    stats.save_comparison(comp, path)
    assert "NaN" not in path.read_text()
    back = stats.load_comparison(path)
    assert math.isnan(back.metrics["lora"]["judge"].value)
    assert back.pairs[0] == comp.pairs[0]
    assert back.metrics["prompt"] == comp.metrics["prompt"]


def test_eval_json_roundtrip_then_compare(tmp_path):
    run = make_run({"prompt": 0.5, "lora": 0.7}, n=30)
    run.save(tmp_path / "eval.json")
    comp = stats.compare(EvalRun.load(tmp_path / "eval.json"), baselines=["prompt"], n_boot=200)
    assert comp.metrics["lora"]["accuracy"].n == 30


def test_bad_arguments():
    run = make_run({"prompt": 0.5, "lora": 0.7}, n=10)
    with pytest.raises(UserError, match="alpha"):
        stats.compare(run, baselines=["prompt"], alpha=1.5)
    with pytest.raises(UserError, match="n_boot"):
        stats.compare(run, baselines=["prompt"], n_boot=10)
    with pytest.raises(UserError, match=r"too few for alpha=0\.001"):
        stats.compare(run, baselines=["prompt"], n_boot=2000, alpha=0.001)


def test_calibration_under_the_null():
    """Same-quality candidates: McNemar rejects at most ~alpha, CIs cover the truth ~95%."""
    rng = np.random.default_rng(0)
    sims, n, p = 120, 60, 0.8
    rejects = covered = 0
    for s in range(sims):
        d = rng.random(n)  # shared difficulty, so the two candidates are correlated
        a = (0.5 * d + 0.5 * rng.random(n) < 0.5).astype(int)
        b = (0.5 * d + 0.5 * rng.random(n) < 0.5).astype(int)
        iid = (rng.random(n) < p).astype(int)
        comp = stats.compare(
            binary_run({"prompt": list(b), "lora": list(a), "iid": list(iid)}),
            baselines=["prompt"],
            n_boot=400,
            seed=s,
        )
        rejects += comp.pair("lora", "prompt", "accuracy").p_value < 0.05
        est = comp.metrics["iid"]["accuracy"]
        covered += est.ci_low <= p <= est.ci_high
    assert rejects / sims <= 0.08
    assert 0.88 <= covered / sims <= 1.0


def test_macro_f1_of_a_resample_averages_its_gold_classes_only():
    # class 0: one right answer; class 1: predicted once but absent from this resample's gold.
    # Counting class 1 (F1 0) would put the two candidates of a paired test on different class sets.
    tp, fp, fn = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), np.array([[0.0, 0.0]])
    assert stats._Bootstrap._macro_f1(tp, fp, fn)[0] == 1.0
    assert np.isnan(
        stats._Bootstrap._macro_f1(np.zeros((1, 2)), np.ones((1, 2)), np.zeros((1, 2)))[0]
    )


def test_explicit_pairs_share_one_bootstrap_and_match_separate_runs():
    """Asking for more pairs in one call gives each pair exactly what a call of its own gives."""
    run = make_run(
        {"prompt": 0.5, "fewshot": 0.56, "rag": 0.62, "knn": 0.6, "lora": 0.8},
        n=150,
        judge_nan={"lora": 0.1},
    )
    names = [c.name for c in run.candidates]
    gate = stats.default_pairs(names, BASES)
    assert gate == [("knn", b) for b in BASES] + [("lora", b) for b in BASES]
    extra = [("fewshot", "prompt"), ("rag", "prompt"), ("rag", "fewshot")]
    both = stats.compare(run, baselines=BASES, pairs=gate + extra, n_boot=400)
    alone = stats.compare(run, baselines=BASES, n_boot=400)
    rungs = stats.compare(run, baselines=["prompt", "fewshot"], pairs=extra, n_boot=400)
    assert both.pairs == alone.pairs + rungs.pairs  # same numbers, to the last bit
    assert both.metrics == alone.metrics
    assert both.meta["baselines"] == BASES and both.meta["missing_baselines"] == []
    # one note per underpowered pair, the extra pairs included
    flagged = {(p.candidate, p.baseline, p.metric) for p in both.pairs if p.underpowered}
    noted = {(w["candidate"], w["baseline"], w["metric"]) for w in both.meta["underpowered"]}
    assert noted == flagged


def test_explicit_pairs_skip_absent_baselines_and_refuse_unknown_candidates():
    run = make_run({"prompt": 0.5, "lora": 0.7}, n=60)
    comp = stats.compare(
        run, baselines=["prompt", "rag"], pairs=[("lora", "rag"), ("lora", "prompt")], n_boot=200
    )
    assert {(p.candidate, p.baseline) for p in comp.pairs} == {("lora", "prompt")}
    assert comp.meta["missing_baselines"] == ["rag"]
    with pytest.raises(UserError, match="qlora not in the evaluation"):
        stats.compare(run, baselines=["prompt"], pairs=[("qlora", "prompt")], n_boot=200)


def test_eval_json_loader_and_means(tmp_path):
    run = make_run({"prompt": 0.5, "lora": 0.8}, n=30, judge_nan={"lora": 0.3}, seed=5)
    lora = run.candidate("lora")
    judged = [it.scores["judge"] for it in lora.items]
    mean, unparsed = lora.mean("judge")
    assert unparsed == sum(1 for x in judged if math.isnan(x)) > 0
    assert mean == pytest.approx(np.nanmean(judged))
    assert lora.means()["judge"] == mean and set(lora.means()) == set(lora.metrics())
    summary = run.summary()
    assert summary.means["lora"] == lora.means() and summary.n_items == 30
    with pytest.raises(UserError, match=r"eval\.json: not found \(run `tunewise eval`"):
        EvalRun.load(tmp_path / "eval.json")
    (tmp_path / "eval.json").write_text('{"project": "p"}')
    with pytest.raises(UserError, match=r"eval\.json: not a valid evaluation file"):
        EvalRun.load(tmp_path / "eval.json")
