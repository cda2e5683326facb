"""The judge's pairwise preference against the reference metric's (#23 point 4): counted per
pair of candidates, ties apart, saved in comparison.json and shown in the report."""

from __future__ import annotations

import math

from tunewise.eval.judge_reference import judge_vs_reference, pair_agreement, reference_metric
from tunewise.eval.results import CandidateResult, EvalRun, ItemResult

NAN = math.nan


def _run(cols: dict[str, dict[str, list[float]]], primary: str = "chrf") -> EvalRun:
    n = len(next(iter(next(iter(cols.values())).values())))
    ids = [f"i{k}" for k in range(n)]
    cands = [
        CandidateResult(
            name=name,
            kind="prompt",
            items=[
                ItemResult(ids[k], f"{name} {k}", {m: v[k] for m, v in metrics.items()})
                for k in range(n)
            ],
        )
        for name, metrics in cols.items()
    ]
    return EvalRun("p", "val", "h", primary, ids, cands)


def test_pair_agreement_counts_ties_apart_and_skips_unscored_items() -> None:
    judge_a = [0.75, 0.5, 0.25, 0.5, NAN]
    judge_b = [0.25, 0.75, 0.5, 0.5, 0.5]
    chrf_a = [0.6, 0.6, 0.4, 0.9, 0.1]
    chrf_b = [0.4, 0.4, 0.4, 0.1, 0.9]
    counts = pair_agreement(judge_a, judge_b, chrf_a, chrf_b)
    # item 0 both prefer a; item 1 judge b, chrF a; item 2 chrF ties; item 3 judge ties
    assert counts == {"agree": 1, "disagree": 1, "judge_ties": 1, "metric_ties": 1}


def test_judge_vs_reference_per_pair_and_overall() -> None:
    run = _run(
        {
            "prompt": {"judge": [0.25, 0.25, 0.5, 0.5], "chrf": [0.2, 0.3, 0.4, 0.5]},
            "fewshot": {"judge": [0.5, 0.5, 0.5, 0.25], "chrf": [0.4, 0.5, 0.6, 0.3]},
            "finetuned": {"judge": [1.0, 0.75, 0.25, 0.75], "chrf": [0.8, 0.7, 0.2, 0.6]},
        }
    )
    found = judge_vs_reference(run)
    assert found is not None and found["metric"] == "chrf"
    by_pair = {(p["a"], p["b"]): p for p in found["pairs"]}
    assert set(by_pair) == {
        ("prompt", "fewshot"),
        ("prompt", "finetuned"),
        ("fewshot", "finetuned"),
    }
    pf = by_pair[("prompt", "fewshot")]
    # items 0, 1: both prefer fewshot; item 2: judge ties; item 3: both prefer prompt
    assert (pf["agree"], pf["disagree"], pf["judge_ties"]) == (3, 0, 1) and pf["rate"] == 1.0
    pt = by_pair[("prompt", "finetuned")]
    # items 0, 1, 3: both prefer finetuned; item 2: judge prefers prompt, chrF prompt too
    assert (pt["agree"], pt["disagree"]) == (4, 0)
    decided = found["agree"] + found["disagree"]
    assert found["rate"] == found["agree"] / decided


def test_a_judge_that_disagrees_is_counted_as_disagreeing() -> None:
    run = _run(
        {
            "a": {"judge": [1.0, 1.0, 1.0], "chrf": [0.1, 0.2, 0.3]},
            "b": {"judge": [0.0, 0.0, 0.0], "chrf": [0.5, 0.6, 0.7]},
        }
    )
    found = judge_vs_reference(run)
    assert found is not None and found["agree"] == 0 and found["disagree"] == 3
    assert found["rate"] == 0.0


def test_no_judge_or_no_reference_metric_gives_nothing() -> None:
    no_judge = _run({"a": {"chrf": [0.1, 0.2]}, "b": {"chrf": [0.3, 0.1]}})
    assert judge_vs_reference(no_judge) is None
    no_ref = _run({"a": {"judge": [0.1, 0.2]}, "b": {"judge": [0.3, 0.1]}}, primary="judge")
    assert reference_metric(no_ref) is None and judge_vs_reference(no_ref) is None
    # a judge-primary run with references holds the judge against the first reference metric
    both = _run(
        {
            "a": {"judge": [1.0, 0.0], "rougeL": [0.9, 0.1]},
            "b": {"judge": [0.0, 1.0], "rougeL": [0.1, 0.9]},
        },
        primary="judge",
    )
    assert reference_metric(both) == "rougeL" and judge_vs_reference(both)["agree"] == 2


def test_the_comparison_saves_it_and_the_report_shows_it(tmp_path) -> None:
    from tunewise.config import GateConfig
    from tunewise.decide.comparison import build
    from tunewise.decide.report_inputs import render_report

    run = _run(
        {
            "prompt": {
                "judge": [0.25, 0.5, 0.25, 0.5, 0.25, 0.5],
                "chrf": [0.2, 0.3, 0.2, 0.4, 0.3, 0.2],
            },
            "finetuned": {
                "judge": [0.75, 0.25, 0.75, 0.75, 0.75, 0.5],
                "chrf": [0.6, 0.5, 0.7, 0.6, 0.5, 0.6],
            },
        }
    )
    out = tmp_path / "eval"
    out.mkdir()
    run.save(out / "eval.json")
    comp = build(run, out, GateConfig(baselines=["prompt"]), gated=["finetuned"], n_boot=200)
    saved = comp.meta["judge_vs_reference"]
    # 6 items: judge prefers finetuned on 4 (agree), prompt on 1 (disagree), ties on 1
    assert (saved["agree"], saved["disagree"], saved["judge_ties"]) == (4, 1, 1)
    html, md = render_report(out)
    for text in (md.read_text(), html.read_text()):
        assert "the judge prefers the same answer as chrf on 4 of 5 item pairs (80%)" in text
        assert "prompt vs finetuned: 4 of 5 (80%)" in text
