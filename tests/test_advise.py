"""Every branch of the advisor, on synthetic results."""

import pytest

from tunewise.decide.advise import Facts, extrapolate, recommend
from tunewise.decide.costs import CostInputs, cost_estimate
from tunewise.errors import UserError


def facts(metrics, better=(), **kw):
    return Facts(
        primary_metric="accuracy",
        metrics=metrics,
        clearly_better={pair: True for pair in better},
        **kw,
    )


def test_prompt_is_enough_when_nothing_clearly_beats_it():
    a = recommend(facts({"prompt": 0.80, "fewshot": 0.81, "rag": 0.82}))
    assert a.recommendation == "prompt"
    assert "0.800" in a.reasons[0]


def test_fewshot_is_enough():
    a = recommend(
        facts({"prompt": 0.50, "fewshot": 0.70, "rag": 0.71}, better=[("fewshot", "prompt")])
    )
    assert a.recommendation == "fewshot"
    assert "0.700" in a.reasons[0]


def test_rag_is_the_answer_for_knowledge_tasks_even_with_a_finetune():
    a = recommend(
        facts(
            {"prompt": 0.3, "fewshot": 0.35, "rag": 0.8, "finetuned": 0.6},
            better=[
                ("rag", "prompt"),
                ("rag", "fewshot"),
                ("finetuned", "prompt"),
                ("finetuned", "fewshot"),
            ],
            methods={"finetuned": "lora"},
            verdict_summary="does not beat rag",
        )
    )
    assert a.recommendation == "rag"
    assert any("does not reliably add facts" in r for r in a.reasons)
    assert any("finetuned" in r and "does not clearly beat RAG" in r for r in a.reasons)


def test_rag_over_labelled_examples_is_not_called_a_knowledge_task():
    a = recommend(
        facts(
            {"prompt": 0.3, "fewshot": 0.35, "rag": 0.8},
            better=[("rag", "prompt"), ("rag", "fewshot")],
            rag_sources=["train"],
        )
    )
    assert a.recommendation == "rag"
    assert any("not a knowledge task" in r for r in a.reasons)
    assert not any("does not reliably add facts" in r for r in a.reasons)


def test_rag_not_chosen_when_finetune_beats_it_but_gate_refused():
    a = recommend(
        facts(
            {"prompt": 0.3, "fewshot": 0.35, "rag": 0.6, "finetuned": 0.7},
            better=[("rag", "prompt"), ("rag", "fewshot"), ("finetuned", "rag")],
            methods={"finetuned": "lora"},
        )
    )
    assert a.recommendation == "undecided" and a.method == "lora"
    assert "clearly above rag 0.600" in a.reasons[0]


def test_fewshot_is_not_enough_when_the_fine_tune_clearly_beats_it():
    # the fine-tune beats few-shot but ties RAG: RAG is the cheapest rung nothing above beats
    a = recommend(
        facts(
            {"prompt": 0.0, "fewshot": 0.79, "rag": 0.82, "finetuned": 0.85},
            better=[
                ("fewshot", "prompt"),
                ("rag", "prompt"),
                ("finetuned", "prompt"),
                ("finetuned", "fewshot"),
            ],
            methods={"finetuned": "lora"},
            rag_sources=["train"],
        )
    )
    assert a.recommendation == "rag"
    assert a.reasons[0] == (
        "RAG scores accuracy 0.820, clearly above the prompt alone (0.000), and nothing "
        "above it on the ladder (finetuned) clearly beats it."
    )


def test_undecided_when_the_gate_holds_a_winning_fine_tune_to_knn():
    # the CLINC150 walkthrough: beats the three rungs, not clearly kNN
    better = {("finetuned", b): True for b in ("prompt", "fewshot", "rag")}
    better |= {
        ("fewshot", "prompt"): True,
        ("finetuned", "knn"): False,
    }  # tested, not clearly better
    f = Facts(
        primary_metric="accuracy",
        clearly_better=better,
        methods={"finetuned": "lora"},
        metrics={
            "prompt": 0.0,
            "fewshot": 0.793,
            "rag": 0.82,
            "knn": 0.907,
            "finetuned": 0.94,
            "finetuned+constrained": 0.95,
            "prompt+constrained": 0.55,
        },
        verdict_summary="DON'T SHIP finetuned: does not clearly beat knn",
        learning_curve=[(175, 0.58), (350, 0.80), (700, 0.94)],
    )
    a = recommend(f)
    assert a.recommendation == "undecided"
    assert a.headline.startswith("Undecided: finetuned clearly beats prompt, few-shot, RAG")
    assert "does not clearly beat knn" in a.reasons[1]
    rivals = [r for r in a.reasons if "is not clearly beaten" in r]
    assert len(rivals) == 1 and rivals[0].startswith(
        "knn (0.907)"
    )  # untested pairs and the fine-tune's own variant are not rivals
    assert not any("Few-shot" in r for r in a.reasons)
    assert (
        a.more_data is not None and "above knn + margin" in a.more_data
    )  # not its own constrained score
    assert not any(r.startswith("finetuned+constrained") for r in a.reasons)


def test_no_rungs_evaluated_is_said_not_crashed():
    a = recommend(facts({"knn": 0.9, "finetuned": 0.8}, methods={"finetuned": "lora"}))
    assert a.recommendation == "undecided" and "No rung of the ladder" in a.headline


def test_finetune_branch_names_method_and_numbers():
    a = recommend(
        facts(
            {"prompt": 0.3, "fewshot": 0.4, "rag": 0.5, "ft-qlora": 0.80, "ft-lora": 0.81},
            methods={"ft-qlora": "qlora", "ft-lora": "lora"},
            ship=True,
            shipped_candidate="ft-qlora",
            verdict_summary="SHIP ft-qlora",
        )
    )
    assert a.recommendation == "finetune" and a.method == "qlora"
    assert "0.800" in a.reasons[0] and "rag 0.500" in a.reasons[0]
    assert any("ft-lora" in r for r in a.reasons)  # the tie is explained
    assert any("4-bit" in r for r in a.reasons)


def test_not_enough_data_extrapolates_from_learning_curve():
    curve = [(100, 0.40), (200, 0.50), (400, 0.60)]
    a = recommend(
        facts(
            {"prompt": 0.5, "fewshot": 0.55, "rag": 0.65, "finetuned": 0.60},
            methods={"finetuned": "lora"},
            learning_curve=curve,
        )
    )
    assert a.more_data is not None and "Not enough data yet" in a.more_data
    needed = extrapolate(curve, 0.67)
    # 0.1 per doubling: 0.67 needs 400 * 2**0.7 ~ 650
    assert needed is not None and 600 <= needed <= 700
    assert str(needed) in a.more_data


def test_rising_curve_already_above_every_rival_asks_for_evidence_not_data():
    # the CLINC150 walkthrough: the fine-tune beats the three rungs but not clearly kNN
    curve = [(175, 0.58), (350, 0.80), (700, 0.94)]
    a = recommend(
        facts(
            {"prompt": 0.0, "fewshot": 0.793, "rag": 0.82, "knn": 0.907, "finetuned": 0.94},
            better=[
                ("finetuned", "prompt"),
                ("finetuned", "fewshot"),
                ("finetuned", "rag"),
                ("knn", "fewshot"),
                ("knn", "rag"),
            ],
            methods={"finetuned": "lora"},
            learning_curve=curve,
        )
    )
    assert a.more_data is not None
    assert "above knn + margin (0.927)" in a.more_data and "add validation items" in a.more_data
    assert "+0.180 accuracy per doubling" in a.more_data
    assert "Not enough data" not in a.more_data


def test_flat_learning_curve_says_more_data_will_not_help():
    a = recommend(
        facts(
            {"prompt": 0.5, "fewshot": 0.5, "rag": 0.5, "finetuned": 0.4},
            methods={"finetuned": "lora"},
            learning_curve=[(100, 0.4), (200, 0.4), (400, 0.39)],
        )
    )
    assert a.more_data is not None and "flat" in a.more_data


def test_underpowered_pairs_are_reported():
    a = recommend(
        facts({"prompt": 0.5, "fewshot": 0.52, "rag": 0.5}, underpowered=["fewshot vs prompt"])
    )
    assert any("too small" in r and "fewshot vs prompt" in r for r in a.reasons)


def test_cost_break_even():
    c = cost_estimate(
        CostInputs(
            requests_per_day=10_000,
            tokens_per_request=1_000,
            api_price_per_mtok=5.0,
            gpu_price_per_hour=2.0,
        )
    )
    # API: 10k * 1k tokens * $5/M = $50/day; GPU: $48/day; break-even 48/(0.005) = 9600 req/day
    assert c.api_cost_per_day == pytest.approx(50.0)
    assert c.gpu_cost_per_day == pytest.approx(48.0)
    assert c.break_even_requests_per_day == pytest.approx(9600.0)
    assert c.cheaper == "self-hosted"
    low = cost_estimate(CostInputs(100, 1_000, 5.0, 2.0))
    assert low.cheaper == "api"
    with pytest.raises(UserError):
        cost_estimate(CostInputs(100, 0, 5.0, 2.0))


def test_cost_is_attached_to_advice():
    a = recommend(facts({"prompt": 0.9}), cost=CostInputs(1000, 500, 10.0, 1.0))
    assert a.cost is not None and a.cost.cheaper == "api"


def test_an_extra_rung_that_leads_is_named_even_when_the_fine_tune_ships():
    # CLINC150 walk-through: the kNN label vote over train examples beat every LLM rung.
    a = recommend(
        facts(
            {"prompt": 0.0, "fewshot": 0.76, "rag": 0.79, "knn": 0.93, "lora-1": 0.85},
            methods={"lora-1": "lora"},
            ship=True,
            shipped_candidate="lora-1",
        )
    )
    assert a.recommendation == "finetune"
    assert any(
        r.startswith("knn scores accuracy 0.930") and "gate.baselines" in r for r in a.reasons
    )
    # ... and stays silent when the extra rung does not lead by the margin
    b = recommend(
        facts(
            {"prompt": 0.5, "fewshot": 0.76, "knn": 0.77, "lora-1": 0.76},
            methods={"lora-1": "lora"},
        )
    )
    assert not any(r.startswith("knn scores") for r in b.reasons)
    # (level with the fine-tune and never tested against it, it is named as an untested rival)
    assert [r for r in b.reasons if "knn" in r] == [
        next(r for r in b.reasons if r.startswith("knn, a classifier without an LLM"))
    ]


def test_facts_from_dir_says_how_many_items_would_tell(tmp_path):
    from _evalfakes import make_run
    from tunewise.decide.advise import facts_from_dir
    from tunewise.eval import stats

    run = make_run({"prompt": 0.5, "fewshot": 0.55, "rag": 0.5, "lora": 0.6}, n=60, seed=1)
    comp = stats.compare(run, baselines=["prompt", "fewshot", "rag"], n_boot=500)
    stats.save_comparison(comp, tmp_path / "comparison.json")
    facts = facts_from_dir(tmp_path)
    flagged = [p for p in comp.pairs if p.metric == "accuracy" and p.underpowered]
    assert flagged and len(facts.underpowered) == len(flagged)
    assert any("items would tell)" in u for u in facts.underpowered)
    assert all(
        u.startswith(f"{p.candidate} vs {p.baseline}")
        for u, p in zip(facts.underpowered, flagged, strict=True)
    )


def test_a_classifier_without_an_llm_that_leads_is_said_plainly():
    # The demo tickets: TF-IDF + logistic regression 0.92, kNN 0.786, few-shot 0.543, fine-tune
    # 0.471.
    m = {
        "prompt": 0.0,
        "fewshot": 0.543,
        "rag": 0.357,
        "knn": 0.786,
        "tfidf": 0.92,
        "probe": 0.70,
        "prompt+constrained": 0.129,
        "finetuned": 0.471,
    }
    a = recommend(facts(m, better=[("fewshot", "prompt")], methods={"finetuned": "lora"}))
    assert a.recommendation == "fewshot"  # the ladder's answer stands ...
    assert a.headline == (
        "Few-shot prompting is enough. But a classifier without an LLM scores accuracy 0.920 "
        "(tfidf); consider it."
    )  # ... and the headline says plainly that no LLM is needed
    plain = [r for r in a.reasons if "without an LLM" in r]
    assert len(plain) == 1 and plain[0].startswith("tfidf scores accuracy 0.920")
    assert "best: fewshot 0.543" in plain[0] and "add it to gate.baselines" in plain[0]
    assert not any(r.startswith("knn scores") for r in a.reasons)  # one classifier message


def test_no_llm_classifier_message_needs_the_margin_and_knows_gate_baselines():
    base = {"prompt": 0.5, "fewshot": 0.80, "finetuned": 0.85}
    tied = recommend(facts({**base, "tfidf": 0.86}, methods={"finetuned": "lora"}, delta=0.02))
    assert "without an LLM" not in tied.headline  # 0.86 < 0.85 + 0.02
    a = recommend(
        facts(
            {**base, "tfidf": 0.90, "probe": float("nan")},
            methods={"finetuned": "lora"},
            gate_baselines=["prompt", "fewshot", "tfidf"],
        )
    )
    assert "scores accuracy 0.900 (tfidf)" in a.headline
    plain = next(r for r in a.reasons if "without an LLM" in r)
    assert "gate.baselines" not in plain  # it already is one
    # an external model is an LLM candidate: a stronger one silences the message
    b = recommend(facts({**base, "tfidf": 0.90, "gpt-x": 0.95}, methods={"finetuned": "lora"}))
    assert "without an LLM" not in b.headline


def test_facts_from_dir_reads_which_candidates_need_no_llm(tmp_path):
    from _evalfakes import make_run
    from tunewise.decide.advise import facts_from_dir
    from tunewise.eval import stats

    run = make_run({"prompt": 0.3, "fewshot": 0.4, "rag": 0.4, "tfidf": 0.9}, n=80, seed=2)
    run.candidate("tfidf").kind = "classical"
    run.save(tmp_path / "eval.json")
    comp = stats.compare(run, baselines=["prompt", "fewshot", "tfidf"], n_boot=500)
    stats.save_comparison(comp, tmp_path / "comparison.json")
    f = facts_from_dir(tmp_path)
    assert f.no_llm == ("tfidf",) and f.gate_baselines == ["prompt", "fewshot", "tfidf"]
    a = recommend(f)
    assert "a classifier without an LLM scores accuracy" in a.headline


def test_comparison_pairs_add_each_rung_against_the_rungs_below_it():
    from tunewise.decide.comparison import pairs_to_test

    names = ["prompt", "fewshot", "rag", "knn", "lora"]
    pairs = pairs_to_test(names, ["prompt", "fewshot", "rag"])
    gate = [(c, b) for c in ("knn", "lora") for b in ("prompt", "fewshot", "rag")]
    assert pairs[: len(gate)] == gate  # the gate's pairs first, in the gate's order
    assert {("fewshot", "prompt"), ("rag", "prompt"), ("rag", "fewshot")} <= set(pairs)
    assert len(pairs) == len(set(pairs))
    assert not any(c == b for c, b in pairs)
    # a rung that is not a gate baseline is not paired against: the gate did not ask for it
    assert all(b != "prompt" for _, b in pairs_to_test(names, ["fewshot", "rag"]))


# issue #17: the banking walk-through, kNN added to gate.baselines, the fine-tune refused
BANKING = {
    "prompt": 0.0,
    "fewshot": 0.866,
    "rag": 0.852,
    "knn": 0.899,
    "prompt+constrained": 0.40,
    "fewshot+constrained": 0.885,  # within the margin of knn: no "classifier without an LLM"
    "finetuned": 0.624,
}
BANKING_BETTER = [(c, "prompt") for c in ("fewshot", "rag", "finetuned")] + [
    ("fewshot", "finetuned")
]


@pytest.mark.parametrize("knn_is_gate_baseline", [True, False])
def test_a_leading_knn_is_described_by_what_the_gate_was_configured_with(knn_is_gate_baseline):
    bases = ["prompt", "fewshot", "rag"] + (["knn"] if knn_is_gate_baseline else [])
    a = recommend(
        facts(
            BANKING,
            better=BANKING_BETTER,
            methods={"finetuned": "lora"},
            shipped_candidate="finetuned",
            verdict_summary="DON'T SHIP finetuned: does not clearly beat prompt, fewshot, rag",
            gate_baselines=bases,
        )
    )
    knn = [r for r in a.reasons if r.startswith("knn scores accuracy 0.899")]
    assert len(knn) == 1
    if knn_is_gate_baseline:
        assert "not a gate baseline" not in knn[0] and "Add it to gate.baselines" not in knn[0]
        assert "it is in gate.baselines, so the gate held the fine-tune to it" in knn[0]
    else:
        assert "it is not a gate baseline" in knn[0] and "Add it to gate.baselines" in knn[0]
    # the refusal is said once, not "Do not ship the fine-tune: DON'T SHIP finetuned: ..."
    refusal = [r for r in a.reasons if "not ship" in r.lower()]
    assert refusal == ["Do not ship finetuned: does not clearly beat prompt, fewshot, rag"]


def test_the_ship_branch_lists_every_configured_gate_baseline():
    a = recommend(
        facts(
            {"prompt": 0.3, "fewshot": 0.4, "rag": 0.5, "knn": 0.6, "lora": 0.8},
            methods={"lora": "lora"},
            ship=True,
            shipped_candidate="lora",
            gate_baselines=["fewshot", "knn"],
        )
    )
    assert (
        a.headline == "Fine-tune with lora: it clearly beats every gate baseline (few-shot, knn)."
    )
    assert "every gate baseline: fewshot 0.400, knn 0.600." in a.reasons[0]
    assert "rag 0.500" not in a.reasons[0]  # not a gate baseline here


def test_facts_from_dir_reads_the_configured_gate_baselines(tmp_path):
    from _evalfakes import make_run
    from tunewise.config import GateConfig
    from tunewise.decide.advise import facts_from_dir
    from tunewise.decide.gate import decide, save_verdict
    from tunewise.eval import stats

    run = make_run({"prompt": 0.3, "fewshot": 0.6, "rag": 0.6, "knn": 0.9, "ft": 0.5}, n=80)
    run.candidate("ft").kind = "finetuned"
    run.save(tmp_path / "eval.json")
    # the ladder tests every rung listed in eval.candidates, and holds the gate to its own list
    comp = stats.compare(run, baselines=["prompt", "fewshot", "rag", "knn"], n_boot=200)
    comp.meta["gate_baselines"] = ["fewshot", "knn"]
    stats.save_comparison(comp, tmp_path / "comparison.json")
    assert facts_from_dir(tmp_path).gate_baselines == ["fewshot", "knn"]
    gate = GateConfig(baselines=["knn"])  # the verdict's own record wins
    save_verdict(decide(comp, "ft", gate), tmp_path / "verdict.json", gate)
    f = facts_from_dir(tmp_path)
    assert f.gate_baselines == ["knn"]
    advice = recommend(f)
    knn = [r for r in [*advice.reasons, advice.headline] if "knn" in r]
    assert knn and not any("not a gate baseline" in r for r in knn)


def test_advice_that_quotes_config_in_brackets_is_printed_as_text(tmp_path, monkeypatch):
    """The demo printed "train.variants:  trains ..." : rich took "[none, fewshot]" for markup
    and dropped it. Advice is data, not markup, in `tunewise run` and `tunewise advise`."""
    from rich.console import Console
    from typer.testing import CliRunner

    from _evalfakes import make_run
    from tunewise.cli import app, workflow_cmd
    from tunewise.decide import advise
    from tunewise.eval import stats

    run = make_run({"prompt": 0.5, "fewshot": 0.55, "rag": 0.5, "lora": 0.6}, n=60, seed=1)
    comp = stats.compare(run, baselines=["prompt", "fewshot", "rag"], n_boot=200)
    stats.save_comparison(comp, tmp_path / "comparison.json")
    quoted = "set train.variants: [none, fewshot] and [bold]rerun"
    real = advise.recommend

    def with_quote(facts, cost=None):
        advice = real(facts, cost=cost)
        advice.reasons.append(quoted)
        return advice

    monkeypatch.setattr(advise, "recommend", with_quote)
    console = Console(record=True, width=300)
    monkeypatch.setattr(workflow_cmd, "console", console)
    workflow_cmd.show_summary(tmp_path)
    assert quoted in console.export_text()
    out = CliRunner().invoke(app, ["advise", str(tmp_path)], terminal_width=300)
    assert quoted in out.output, out.output


def test_a_no_llm_classifier_level_with_the_fine_tune_is_named_when_the_gate_did_not_test_it():
    # The CLINC150 walkthrough with train.variants: the embedding probe 0.960 beside the
    # context-trained fine-tune 0.953 (inside the margin: no headline), while the gate held the
    # fine-tune to kNN only and the advice offered kNN (0.907) as the cheaper thing to serve.
    better = {("finetuned+fewshot", b): True for b in ("prompt", "fewshot", "rag")}
    better |= {("finetuned+fewshot", "knn"): False, ("fewshot", "prompt"): True}
    m = {
        "prompt": 0.0,
        "fewshot": 0.793,
        "rag": 0.82,
        "knn": 0.907,
        "tfidf": 0.94,
        "probe": 0.96,
        "finetuned": 0.94,
        "finetuned+fewshot": 0.953,
    }
    methods = {"finetuned": "lora", "finetuned+fewshot": "lora"}
    f = Facts(
        primary_metric="accuracy",
        metrics=m,
        clearly_better=better,
        methods=methods,
        gate_baselines=["prompt", "fewshot", "rag", "knn"],
        verdict_summary="DON'T SHIP finetuned+fewshot: does not clearly beat knn",
    )
    a = recommend(f)
    assert a.recommendation == "undecided" and "without an LLM" not in a.headline
    named = [r for r in a.reasons if r.startswith("probe, a classifier without an LLM")]
    assert len(named) == 1, a.reasons
    assert "0.960" in named[0] and "best: finetuned+fewshot 0.953" in named[0]
    assert "add it to gate.baselines" in named[0]
    # Below the best fine-tune, or already a gate baseline: nothing more is said.
    lower = recommend(Facts(**{**f.__dict__, "metrics": {**m, "probe": 0.95, "tfidf": 0.9}}))
    assert not any("classifier without an LLM" in r for r in lower.reasons)
    held = recommend(
        Facts(**{**f.__dict__, "gate_baselines": ["prompt", "fewshot", "rag", "knn", "probe"]})
    )
    assert not any(r.startswith("probe, a classifier") for r in held.reasons)
    # tfidf (0.940) is level with neither fine-tune's best: only the best no-LLM one is named
    assert not any(r.startswith("tfidf") for r in a.reasons)


def test_advice_over_a_metric_with_no_usable_scores_names_no_winner():
    # The judge echoed every answer: no candidate has a judge score, so "the prompt is enough"
    # would rest on NaN comparisons (all False) and pick the cheapest rung.
    nan = float("nan")
    f = Facts(
        primary_metric="judge",
        metrics={"prompt": nan, "fewshot": nan, "rag": nan, "finetuned": nan},
        clearly_better={},
        methods={"finetuned": "lora"},
    )
    a = recommend(f)
    assert a.recommendation == "undecided" and a.method is None
    assert a.headline == (
        "No recommendation: judge has no usable score for prompt, fewshot, rag, finetuned."
    )
    text = " ".join([a.headline, *a.reasons])
    assert "enough" not in text and "Fine-tune with" not in text
    assert "judge's replies could not be read" in text and "eval.judge_model" in text
    # One rung with a number is not enough either: the others cannot be ranked against it.
    f.metrics["prompt"] = 0.4
    assert recommend(f).recommendation == "undecided"
