"""The ship gate: every branch, on hand-made comparisons (a pure function, so no run needed)."""

from __future__ import annotations

import math

import pytest

from _evalfakes import binary_run, make_run
from tunewise.config import GateConfig
from tunewise.decide.gate import decide, load_verdict, save_verdict
from tunewise.errors import UserError
from tunewise.eval import stats
from tunewise.eval.results import Comparison, MetricEstimate, PairedTest

BASES = ["prompt", "fewshot", "rag"]


def est(v: float, n: int = 500) -> MetricEstimate:
    return MetricEstimate(value=v, ci_low=v - 0.03, ci_high=v + 0.03, n=n)


def pair(
    base: str,
    diff: float,
    p: float,
    *,
    cand_v: float = 0.8,
    metric: str = "accuracy",
    n: int = 500,
    mdd: float = 0.05,
) -> PairedTest:
    return PairedTest(
        candidate="lora",
        baseline=base,
        metric=metric,
        candidate_value=cand_v,
        baseline_value=cand_v - diff,
        diff=diff,
        ci_low=diff - 0.04,
        ci_high=diff + 0.04,
        p_value=p,
        test="mcnemar-exact",
        n=n,
        min_detectable_diff=mdd,
        underpowered=abs(diff) < mdd,
    )


def comparison(
    diffs: dict[str, tuple[float, float]],
    *,
    fmt: dict[str, float] | None = None,
    extra: dict[str, dict[str, float]] | None = None,
    n: int = 500,
    mdd: float = 0.05,
) -> Comparison:
    """``diffs``: baseline -> (lora minus baseline on accuracy, p)."""
    fmt = fmt or {}
    metrics = {"lora": {"accuracy": est(0.8, n), "format_compliance": est(fmt.get("lora", 1.0), n)}}
    pairs = []
    for base, (d, p) in diffs.items():
        metrics[base] = {
            "accuracy": est(0.8 - d, n),
            "format_compliance": est(fmt.get(base, 1.0), n),
        }
        pairs.append(pair(base, d, p, n=n, mdd=mdd))
    for cand, per in (extra or {}).items():
        for m, v in per.items():
            metrics.setdefault(cand, {})[m] = est(v, n)
    return Comparison(primary_metric="accuracy", metrics=metrics, pairs=pairs, meta={})


CFG = GateConfig()  # alpha 0.05, delta 0.02, baselines prompt/fewshot/rag, format guard 0.02


def test_ship_when_every_baseline_is_beaten():
    v = decide(
        comparison({"prompt": (0.2, 1e-6), "fewshot": (0.1, 1e-4), "rag": (0.05, 0.01)}),
        "lora",
        CFG,
    )
    assert v.ship and v.guard_failures == []
    assert [r.baseline for r in v.reasons] == BASES and all(r.passed for r in v.reasons)
    assert v.summary.startswith("SHIP lora")
    # one reason line per baseline, with the numbers
    assert "0.800 vs 0.750" in v.reasons[2].reason and "+0.050" in v.reasons[2].reason
    assert "p=0.010" in v.reasons[2].reason


def test_win_on_primary_but_p_too_high():
    v = decide(
        comparison({"prompt": (0.2, 1e-6), "fewshot": (0.1, 1e-4), "rag": (0.06, 0.08)}),
        "lora",
        CFG,
    )
    assert not v.ship
    rag = v.reasons[2]
    assert not rag.passed and "not significant (p=0.080 >= alpha 0.05)" in rag.reason
    assert [r.passed for r in v.reasons] == [True, True, False]
    assert "does not clearly beat rag" in v.summary


def test_margin_too_small():
    v = decide(
        comparison({"prompt": (0.2, 1e-6), "fewshot": (0.1, 1e-4), "rag": (0.015, 0.001)}),
        "lora",
        CFG,
    )
    assert not v.ship
    assert "margin +0.015 < delta 0.02" in v.reasons[2].reason


def test_margin_exactly_delta_ships():
    cfg = GateConfig(delta=0.05)
    v = decide(comparison({b: (0.05, 0.001) for b in BASES}), "lora", cfg)
    assert v.ship


def test_tie_does_not_ship():
    v = decide(
        comparison({"prompt": (0.2, 1e-6), "fewshot": (0.0, 1.0), "rag": (0.1, 1e-3)}), "lora", CFG
    )
    assert not v.ship and "tied" in v.reasons[1].reason


def test_significantly_worse_is_said_so_with_rag_hint():
    v = decide(
        comparison({"prompt": (0.2, 1e-6), "fewshot": (0.1, 1e-4), "rag": (-0.1, 1e-4)}),
        "lora",
        CFG,
    )
    assert not v.ship and "significantly worse" in v.reasons[2].reason
    assert "knowledge task" in v.summary  # the article's rule: RAG is for facts


def test_headline_names_the_strongest_baseline_not_the_first_significant_one():
    # issue #17: the headline singled out "rag is significantly better (+0.228)" while few-shot
    # and kNN beat the fine-tune by more
    bases = ["prompt", "rag", "fewshot", "knn"]
    comp = comparison(
        {
            "prompt": (0.6, 1e-9),
            "rag": (-0.05, 1e-6),
            "fewshot": (-0.08, 1e-7),
            "knn": (-0.1, 1e-8),
        }
    )
    comp.meta["retrieval_sources"] = {"rag": ["train"]}
    v = decide(comp, "lora", GateConfig(baselines=bases))
    assert not v.ship
    assert "the strongest baseline, knn (0.900), leads by +0.100 (p=1e-08)" in v.summary
    assert "(+0.050)" not in v.summary  # no single rung's number is singled out
    assert "not evidence of a knowledge task" in v.summary  # the hint itself stays
    # a lead that is not significant says so, and names the largest significant gap
    comp = comparison({"prompt": (-0.05, 0.01), "fewshot": (-0.06, 0.2)})
    v = decide(comp, "lora", GateConfig(baselines=["prompt", "fewshot"]))
    assert "fewshot (0.860), leads by +0.060 (not significant)" in v.summary
    assert "the largest significant gap is prompt's (+0.050, p=0.010)" in v.summary


@pytest.mark.parametrize(
    ("sources", "says", "never"),
    [
        (["docs"], "looks like a knowledge task", "also retrieved"),
        (["docs", "train"], "also retrieved training examples", "not evidence"),
        (["train"], "not evidence of a knowledge task", "looks like a knowledge task"),
    ],
)
def test_rag_hint_depends_on_what_rag_retrieved(sources, says, never):
    comp = comparison({"prompt": (0.2, 1e-6), "fewshot": (0.1, 1e-4), "rag": (-0.1, 1e-4)})
    comp.meta["retrieval_sources"] = {"rag": sources}
    v = decide(comp, "lora", CFG)
    assert says in v.summary and never not in v.summary


def test_compare_records_what_each_rag_rung_retrieved():
    run = make_run({"lora": 0.8, "rag": 0.7}, n=40)
    run.candidate("rag").meta["sources"] = ["train"]
    comp = stats.compare(run, baselines=["rag"], n_boot=200, alpha=0.05)
    assert comp.meta["retrieval_sources"] == {"rag": ["train"]}


def test_small_sample_explains_it_cannot_tell():
    v = decide(comparison({b: (0.1, 0.2) for b in BASES}, n=10, mdd=0.6), "lora", CFG)
    assert not v.ship
    assert all("too small to tell" in r.reason and "0.600" in r.reason for r in v.reasons)


def test_missing_baseline_is_dont_ship_with_reason():
    v = decide(comparison({"prompt": (0.2, 1e-6), "fewshot": (0.1, 1e-4)}), "lora", CFG)
    assert not v.ship
    rag = v.reasons[2]
    assert rag.baseline == "rag" and not rag.passed and "missing from the evaluation" in rag.reason
    assert [r.passed for r in v.reasons[:2]] == [True, True]


def test_baseline_present_but_not_paired():
    comp = comparison({"prompt": (0.2, 1e-6), "fewshot": (0.1, 1e-4), "rag": (0.1, 1e-4)})
    comp.pairs = [p for p in comp.pairs if p.baseline != "rag"]
    v = decide(comp, "lora", CFG)
    assert not v.ship and "no paired test" in v.reasons[2].reason


def test_format_guard_regression_blocks_ship_even_if_unconfigured():
    comp = comparison(
        {b: (0.1, 1e-4) for b in BASES},
        fmt={"lora": 0.90, "prompt": 0.97, "fewshot": 0.99, "rag": 0.95},
    )
    cfg = GateConfig(guards={})  # format compliance is a guard anyway
    v = decide(comp, "lora", cfg)
    assert not v.ship and all(r.passed for r in v.reasons)
    assert len(v.guard_failures) == 1
    assert "format_compliance: 0.900 vs best baseline fewshot 0.990" in v.guard_failures[0]
    assert "guard" in v.summary


def test_guard_within_tolerance_passes():
    comp = comparison({b: (0.1, 1e-4) for b in BASES}, fmt={"lora": 0.98, "fewshot": 0.99})
    assert decide(comp, "lora", CFG).ship


def test_configured_guard_worse_and_unmeasured():
    comp = comparison(
        {b: (0.1, 1e-4) for b in BASES},
        extra={"lora": {"json_valid": 0.80}, "prompt": {"json_valid": 0.95, "judge": 0.7}},
    )
    v = decide(comp, "lora", GateConfig(guards={"json_valid": 0.05, "judge": 0.1}))
    assert not v.ship
    assert any(
        f.startswith("json_valid: 0.800 vs best baseline prompt 0.950") for f in v.guard_failures
    )
    assert any(f.startswith("judge: not measured for lora") for f in v.guard_failures)


def test_nan_primary_is_not_a_win():
    comp = comparison({b: (0.1, 1e-4) for b in BASES})
    comp.pairs[0] = pair("prompt", math.nan, math.nan)
    v = decide(comp, "lora", CFG)
    assert not v.ship and "no usable score" in v.reasons[0].reason


def test_user_errors():
    comp = comparison({b: (0.1, 1e-4) for b in BASES})
    with pytest.raises(UserError, match="not in the comparison"):
        decide(comp, "qlora", CFG)
    with pytest.raises(UserError, match="one of the gate's baselines"):
        decide(comp, "rag", CFG)
    comp.primary_metric = "judge"
    with pytest.raises(UserError, match="primary metric 'judge'"):
        decide(comp, "lora", CFG)


def test_custom_alpha_and_baselines():
    comp = comparison({"prompt": (0.1, 0.03), "fewshot": (0.1, 0.03)})
    assert decide(comp, "lora", GateConfig(baselines=["prompt", "fewshot"])).ship
    assert not decide(comp, "lora", GateConfig(baselines=["prompt", "fewshot"], alpha=0.01)).ship


def test_end_to_end_from_eval_run(tmp_path):
    run = make_run({"prompt": 0.45, "fewshot": 0.5, "rag": 0.55, "lora": 0.85}, n=300)
    comp = stats.compare(run, baselines=BASES, n_boot=500)
    v = decide(comp, "lora", CFG)
    assert v.ship, v.summary
    save_verdict(v, tmp_path / "verdict.json", CFG)
    assert load_verdict(tmp_path / "verdict.json") == v


def test_end_to_end_small_sample_does_not_ship():
    # lora wins 5 of 5 discordant items on 12: a real difference, but p = 0.0625
    base = [0] * 5 + [1] * 4 + [0] * 3
    comp = stats.compare(
        binary_run({"prompt": base, "fewshot": base, "rag": base, "lora": [1] * 9 + [0] * 3}),
        baselines=BASES,
        n_boot=500,
    )
    v = decide(comp, "lora", CFG)
    assert not v.ship and all("too small to tell" in r.reason for r in v.reasons)


# ----------------------------------------------------------------------------- the CLI verb
def _cli(args):
    from typer.testing import CliRunner

    from tunewise.cli import app

    return CliRunner().invoke(app, args, env={"COLUMNS": "400"})  # no wrapping inside reasons


@pytest.fixture
def eval_dir(tmp_path):
    d = tmp_path / "eval"
    make_run({"prompt": 0.45, "fewshot": 0.5, "rag": 0.55, "lora": 0.85, "weak": 0.56}, n=250).save(
        d / "eval.json"
    )
    return d


def test_cli_gate_exit_codes_and_verdict_file(eval_dir):
    import json

    res = _cli(["gate", str(eval_dir), "--candidate", "lora"])
    assert res.exit_code == 0, res.output
    assert "SHIP lora" in res.output and res.output.count("beats") >= 3
    saved = json.loads((eval_dir / "verdict.json").read_text())
    assert saved["ship"] is True and saved["gate"]["delta"] == 0.02
    assert (eval_dir / "comparison.json").is_file()

    res = _cli(["gate", str(eval_dir), "--candidate", "weak"])
    assert res.exit_code == 1
    assert "DON'T SHIP weak" in res.output and "does not beat rag" in res.output
    assert json.loads((eval_dir / "verdict.json").read_text())["ship"] is False

    res = _cli(["gate", str(eval_dir), "--candidate", "lora", "--delta", "0.5"])
    assert res.exit_code == 1 and "< delta 0.5" in res.output

    res = _cli(["gate", str(eval_dir), "--candidate", "ghost"])
    assert res.exit_code == 2 and "'ghost' is not in the comparison" in res.output


def test_cli_gate_missing_baseline_and_custom_baselines(eval_dir):
    res = _cli(["gate", str(eval_dir), "--candidate", "lora", "-b", "prompt", "-b", "rag-hybrid"])
    assert res.exit_code == 1 and "rag-hybrid: missing from the evaluation" in res.output
    res = _cli(
        [
            "gate",
            str(eval_dir),
            "--candidate",
            "lora",
            "-b",
            "prompt",
            "--alpha",
            "0.01",
            "--delta",
            "0",
        ]
    )
    assert res.exit_code == 0, res.output


def test_cli_gate_reads_project_gate_section(eval_dir, tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    (tmp_path / "project.yaml").write_text(
        "name: t\ndata: {train: train.jsonl}\ngate: {delta: 0.6}\n"
    )
    res = _cli(
        ["gate", str(eval_dir), "--candidate", "lora", "--project", str(tmp_path / "project.yaml")]
    )
    assert res.exit_code == 1 and "< delta 0.6" in res.output


def test_cli_gate_without_eval_json_is_exit_2(tmp_path):
    res = _cli(["gate", str(tmp_path), "--candidate", "lora"])
    assert res.exit_code == 2 and "eval.json: not found" in res.output


def test_verdict_file_records_the_gate_settings_that_produced_it(tmp_path):
    import json

    run = make_run({"prompt": 0.45, "fewshot": 0.5, "rag": 0.55, "lora": 0.85}, n=120)
    v = decide(stats.compare(run, baselines=BASES, n_boot=300), "lora", CFG)
    save_verdict(v, tmp_path / "with.json", CFG)
    back = load_verdict(tmp_path / "with.json")
    assert back == v and back.gate == CFG.model_dump(mode="json")
    save_verdict(v, tmp_path / "without.json")
    assert "gate" not in json.loads((tmp_path / "without.json").read_text())
    assert load_verdict(tmp_path / "without.json").gate is None
    with pytest.raises(UserError, match="not found"):
        load_verdict(tmp_path / "missing.json")


def test_verdict_lines_do_not_repeat_the_baseline():
    from tunewise.cli.workflow_cmd import gate_line
    from tunewise.eval.results import BaselineReason

    v = decide(
        comparison({"prompt": (0.2, 1e-6), "fewshot": (0.0, 1.0), "rag": (0.1, 1e-3)}), "lora", CFG
    )
    lines = [gate_line(r) for r in v.reasons]
    assert lines[0].startswith("✓ beats prompt: accuracy") and lines[1].startswith("✗ does not")
    assert not any(" vs prompt: beats prompt" in line for line in lines)
    # a reason that does not name its baseline gets it in front
    judge = BaselineReason("judge calibration", True, "the judge agrees with people: kappa 0.8")
    assert gate_line(judge) == "✓ judge calibration: the judge agrees with people: kappa 0.8"
    # "prompt" inside "prompt+constrained" is not the baseline's name
    pc = BaselineReason("prompt", False, "prompt+constrained leads")
    assert gate_line(pc) == "✗ prompt: prompt+constrained leads"
