"""The report: content, escaping, Markdown, the CLI, and a render in headless Chromium."""

from __future__ import annotations

import io
import json
import os
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from _evalfakes import CHROMIUM, launch_chromium, make_run, write_train_run
from tunewise.cli import app
from tunewise.decide.report_inputs import render_report as render
from tunewise.eval import human, stats
from tunewise.eval.report_tables import md_escape

BASES = ["prompt", "fewshot", "rag"]


@pytest.fixture
def eval_dir(tmp_path):
    d = tmp_path / "eval"
    d.mkdir()
    run = make_run(
        {"prompt": 0.45, "fewshot": 0.5, "rag": 0.6, "lora": 0.8}, n=160, judge_nan={"lora": 0.1}
    )
    for it in run.candidate("lora").items:  # whichever lands among the worst examples
        if it.scores["accuracy"] == 0:
            it.output = "<img src=x onerror=alert(1)> | **bold** `tick`"
    run.save(d / "eval.json")
    return d


def test_render_writes_self_contained_html_and_markdown(eval_dir, tmp_path):
    write_train_run(tmp_path / "run-lora")
    html_path, md_path = render(eval_dir, [tmp_path / "run-lora"])
    html = html_path.read_text()
    comp = stats.load_comparison(eval_dir / "comparison.json")  # computed and saved on the way
    acc = comp.metrics["lora"]["accuracy"]
    assert f"{acc.value:.3f}" in html and f"{acc.ci_low:.3f}–{acc.ci_high:.3f}" in html
    # self-contained: figures inlined, nothing fetched from elsewhere
    assert html.count("data:image/png;base64,") == 3  # metrics bars, confusion matrix, loss curves
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    for section in (
        'id="verdict"',
        'id="metrics"',
        'id="pairs"',
        'id="confusion"',
        'id="training"',
        'id="worst"',
    ):
        assert section in html
    assert '<span class="badge">SHIP</span>' in html and "lora: beats prompt, fewshot, rag" in html
    assert html.index('id="verdict"') < html.index('id="metrics"')
    assert "judge unparsed on" in html
    md = md_path.read_text()
    assert md.startswith("# tunewise report: triage")
    assert f"{acc.value:.3f}" in md and "## Paired tests" in md and "run-lora" in md


def test_user_text_is_escaped(eval_dir):
    html_path, md_path = render(eval_dir)
    html = html_path.read_text()
    assert (
        "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    )
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    md = md_path.read_text()
    assert "<script>" not in md and "<img" not in md
    assert "\\| \\*\\*bold\\*\\* \\`tick\\`" in md


def test_md_escape_keeps_table_cells_intact():
    assert md_escape("a|b\nc") == "a\\|b ⏎ c"
    assert md_escape("x" * 50, limit=10) == "x" * 10 + "…"


def test_existing_verdict_is_shown_not_recomputed(eval_dir):
    runner = CliRunner()
    res = runner.invoke(app, ["gate", str(eval_dir), "--candidate", "lora", "--delta", "0.9"])
    assert res.exit_code == 1, res.output
    html = render(eval_dir)[0].read_text()
    assert "DON&#39;T SHIP</span>" in html and "lora: does not clearly beat" in html
    assert "Provisional" not in html
    assert "margin" in html and "&lt; delta 0.9" in html


def test_human_ratings_feed_the_report(eval_dir):
    session = human.open_session(eval_dir, "lora", "prompt")
    for i, item_id in enumerate(session.order[:10]):
        left = session.left_is(item_id)
        choice = "left" if (left == "a") == (i < 7) else "right"  # lora wins 7, loses 3
        session.rate(item_id, choice)
    session.store.close()
    html, md = (p.read_text() for p in render(eval_dir))
    assert 'id="ratings"' in html and "<td>7</td><td>3</td>" in html
    assert "| lora | prompt | 7 | 3 | 0 | 0.700 |" in md


def test_a_damaged_judge_calibration_file_is_one_line_naming_it(eval_dir):
    from tunewise.errors import UserError

    session = human.open_session(eval_dir, "lora", "prompt")
    session.rate(session.order[0], "left")
    session.store.close()
    bad = eval_dir / "judge_calibration.json"
    for text in ('{"pairs": [', '{"pairs": [{"a": "lora"}]}'):  # cut short; a field missing
        bad.write_text(text)
        with pytest.raises(UserError, match=r"judge_calibration\.json: unreadable judge calib"):
            render(eval_dir)


def test_learning_curve_is_shown_when_the_ladder_wrote_one(eval_dir):
    from tunewise.eval.learning_curve import save_curve

    html, md = (p.read_text() for p in render(eval_dir))
    assert 'id="learning-curve"' not in html and "## Learning curve" not in md
    save_curve(
        eval_dir / "learning_curve.json",
        [(40, 0.5), (80, 0.625), (160, 0.8)],
        {"metric": "accuracy"},
    )
    html, md = (p.read_text() for p in render(eval_dir))
    assert 'id="learning-curve"' in html and "<td>80</td><td>0.625</td>" in html
    assert 'alt="learning curve"' in html
    assert "| 40 | 0.500 |" in md and "| 160 | 0.800 |" in md
    (eval_dir / "learning_curve.json").write_text('{"points": [[1]]}')
    res = CliRunner().invoke(app, ["report", str(eval_dir)])
    assert res.exit_code == 2 and "learning_curve.json: not a valid learning curve" in res.output


def test_bar_chart_survives_an_interval_that_excludes_its_estimate():
    from tunewise.eval.figures import metrics_figure
    from tunewise.eval.results import Comparison, MetricEstimate

    comp = Comparison(
        primary_metric="accuracy",
        pairs=[],
        meta={},
        metrics={
            "fewshot": {"macro_f1": MetricEstimate(value=0.383, ci_low=0.369, ci_high=0.370, n=150)}
        },
    )
    assert metrics_figure(comp, ["fewshot"], ["macro_f1"], {"fewshot": "#2563eb"}).startswith(
        "data:image/png"
    )


def test_missing_eval_json_is_a_user_error(tmp_path):
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "eval.json: not found" in res.output


def test_bad_train_run_is_a_user_error(eval_dir, tmp_path):
    res = CliRunner().invoke(app, ["report", str(eval_dir), "--train-run", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "nope: not found (expected a training run directory" in res.output


def test_cli_compare_then_report(eval_dir, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["compare", str(eval_dir), "--n-boot", "500", "--ci", "percentile"])
    assert res.exit_code == 0, res.output
    raw = json.loads((eval_dir / "comparison.json").read_text())
    assert raw["meta"]["ci_method"] == "percentile" and raw["meta"]["n_boot"] == 500
    write_train_run(tmp_path / "r1")
    res = runner.invoke(app, ["report", str(eval_dir), "--train-run", str(tmp_path / "r1")])
    assert res.exit_code == 0, res.output
    assert (eval_dir / "report.html").is_file() and (eval_dir / "report.md").is_file()


@pytest.mark.browser
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (apt-get install -y chromium)"
)
def test_report_renders_in_headless_chromium(eval_dir, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    write_train_run(tmp_path / "run-lora")
    html_path, _ = render(eval_dir, [tmp_path / "run-lora"])
    comp = stats.load_comparison(eval_dir / "comparison.json")
    acc = comp.metrics["lora"]["accuracy"]
    pair = comp.pair("lora", "rag", "accuracy")
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(html_path.as_uri())
            png = page.screenshot(full_page=True)
            verdict = page.locator("#verdict .badge").first.inner_text()
            metrics_text = page.locator("#metrics").inner_text()
            pairs_text = page.locator("#pairs").inner_text()
            # every figure decoded and laid out (a broken data URI has naturalWidth 0)
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        finally:
            browser.close()
    img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    assert img.shape[0] > 1500 and img.std() > 10  # not blank
    assert (img < 200).mean() > 0.02  # a real amount of ink, not a white page with a speck
    assert verdict == "SHIP"
    assert (
        f"{acc.value:.3f}" in metrics_text and f"{acc.ci_low:.3f}–{acc.ci_high:.3f}" in metrics_text
    )
    assert f"{pair.diff:+.3f}" in pairs_text
    assert len(widths) == 3 and all(w > 100 for w in widths)


def test_many_classes_text_task_and_baselines_only(tmp_path):
    from tunewise.eval.results import CandidateResult, EvalRun, ItemResult

    # 40 classes: the confusion matrix keeps the most frequent ones and says so
    d = tmp_path / "many"
    ids = [f"i{i}" for i in range(200)]
    cands = [
        CandidateResult(
            name=name,
            kind=name,
            items=[
                ItemResult(
                    item_id=i,
                    output="x",
                    scores={"accuracy": float(k % m != 0)},
                    gold=f"c{k % 40}",
                    predicted=f"c{k % 40}" if k % m else f"c{(k + 1) % 40}",
                )
                for k, i in enumerate(ids)
            ],
        )
        for name, m in (("prompt", 3), ("lora", 7))
    ]
    EvalRun(
        project="many",
        split="val",
        split_hash="h",
        primary_metric="accuracy",
        item_ids=ids,
        candidates=cands,
    ).save(d / "eval.json")
    html = render(d)[0].read_text()
    assert "the 25 most frequent of 40 gold classes" in html
    assert 'id="confusion"' in html and "fewshot" in html  # missing baselines are called out

    # free-text task: no labels, so no macro-F1 and no confusion matrix; a metric only some have
    d = tmp_path / "text"
    cands = [
        CandidateResult(
            name=name,
            kind=name,
            items=[
                ItemResult(
                    item_id=i,
                    output="answer",
                    scores={
                        "judge": 0.5 + 0.1 * (name == "lora"),
                        **({"exact_match": 1.0} if name == "lora" else {}),
                    },
                )
                for i in ids[:30]
            ],
        )
        for name in ("prompt", "fewshot", "rag", "lora")
    ]
    EvalRun(
        project="text",
        split="val",
        split_hash="h",
        primary_metric="judge",
        item_ids=ids[:30],
        candidates=cands,
    ).save(d / "eval.json")
    html, md = (p.read_text() for p in render(d))
    assert 'id="confusion"' not in html and "macro_f1" not in html
    assert "| prompt (baseline) | – |" in md or "| prompt (baseline) | 0.500" in md

    # only baselines: nothing to gate, said plainly
    d = tmp_path / "bases"
    EvalRun(
        project="b",
        split="val",
        split_hash="h",
        primary_metric="judge",
        item_ids=ids[:30],
        candidates=cands[:3],
    ).save(d / "eval.json")
    html = render(d)[0].read_text()
    assert "NO VERDICT" in html


def test_prompts_come_from_the_split_file_and_all_verdicts_show(tmp_path):
    """The harness records split_path; the report reads prompts back by content id."""
    from tunewise.config import GateConfig
    from tunewise.data.schema import load_examples
    from tunewise.decide.gate import decide, save_verdict
    from tunewise.eval.harness import item_ids
    from tunewise.eval.results import CandidateResult, EvalRun, ItemResult
    from tunewise.fsio import sha256_file

    split = tmp_path / "val.jsonl"
    split.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"printer {i} is <on fire>"},
                        {"role": "assistant", "content": f"Category: hw{i % 3}"},
                    ]
                }
            )
            + "\n"
            for i in range(30)
        )
    )
    ids = item_ids(load_examples(split))
    cands = [
        CandidateResult(
            name=name,
            kind=name,
            items=[
                ItemResult(
                    item_id=i,
                    output=f"Category: hw{k % 3}" if k % m else "nope",
                    scores={"accuracy": float(k % m != 0), "format_compliance": 1.0},
                )
                for k, i in enumerate(ids)
            ],
        )
        for name, m in (("prompt", 2), ("fewshot", 2), ("rag", 2), ("lora", 9), ("qlora", 3))
    ]
    d = tmp_path / "eval"
    EvalRun(
        project="p",
        split="val",
        split_hash=sha256_file(split),
        primary_metric="accuracy",
        item_ids=ids,
        candidates=cands,
        meta={"split_path": str(split)},
    ).save(d / "eval.json")
    comp = stats.compare(EvalRun.load(d / "eval.json"), baselines=BASES, n_boot=300)
    stats.save_comparison(comp, d / "comparison.json")
    for name in ("lora", "qlora"):
        save_verdict(decide(comp, name, GateConfig()), d / f"verdict-{name}.json")
    html = render(d)[0].read_text()
    assert "printer 0 is &lt;on fire&gt;" in html  # prompt found via the split file, escaped
    assert "Category: hw0" in html  # the reference answer
    assert html.count('<section class="verdict') == 2 and 'id="verdict-2"' in html


def test_rerun_eval_makes_saved_comparison_and_verdict_stale(eval_dir):
    assert (
        CliRunner()
        .invoke(app, ["gate", str(eval_dir), "--candidate", "lora", "--delta", "0.9"])
        .exit_code
        == 1
    )
    assert "DON&#39;T SHIP</span>" in render(eval_dir)[0].read_text()
    # the evaluation is rerun with one more candidate: old comparison and verdict no longer apply
    run = make_run({"prompt": 0.45, "fewshot": 0.5, "rag": 0.6, "lora": 0.8, "qlora": 0.7}, n=160)
    run.save(eval_dir / "eval.json")
    html = render(eval_dir)[0].read_text()
    assert "Provisional" in html and "qlora" in html
    assert set(stats.load_comparison(eval_dir / "comparison.json").metrics) == {
        "prompt",
        "fewshot",
        "rag",
        "lora",
        "qlora",
    }
    assert (eval_dir / "verdict.json").is_file()  # the user's file is left alone


@pytest.mark.parametrize(
    ("module", "other"),
    [
        ("tunewise.eval.report", "tunewise.eval.human"),
        ("tunewise.eval.human", "tunewise.eval.report"),
    ],
)
def test_report_and_rating_app_do_not_import_each_other(module, other):
    """The item helpers live in eval/items.py: importing one side never loads the other."""
    import subprocess
    import sys

    loaded = f"print({other!r} in sys.modules, 'tunewise.eval.items' in sys.modules)"
    code = f"import sys, {module}; {loaded}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_report_covers_the_sealed_test_split_when_given(eval_dir, tmp_path):
    """After --final the report shows the test split in its own, clearly marked section."""
    test_dir = tmp_path / "eval-test"
    test_dir.mkdir()
    run = make_run({"prompt": 0.5, "fewshot": 0.6, "rag": 0.62, "lora-r8": 0.97}, n=60, seed=4)
    run.split = "test"
    run.meta.update({"final": True, "final_use": 1})
    for i, c in enumerate(run.candidates):
        c.meta.update({"seconds": 10.0 * (i + 1), "cache_hits": 0, "cache_misses": 60})
    run.candidate("prompt").meta.update({"cache_hits": 60, "cache_misses": 0})
    run.save(test_dir / "eval.json")
    html_path, md_path = render(eval_dir)
    assert "SEALED TEST" not in html_path.read_text()  # validation only, unless given
    html_path, md_path = render(eval_dir, test_dir=test_dir)
    html, md = html_path.read_text(), md_path.read_text()
    for text in (html, md):
        assert "SEALED TEST SPLIT" in text and "used once" in text
        assert "final use #1" in text
        # what was run on test, and what evaluating it took
        assert "total 100.0 s for 4 candidates" in text
        assert "prompt 10.0 s (answers from the cache), fewshot 20.0 s," in text
        assert "Evaluation time on val: prompt 0.0 s" in text  # validation's line too
    # `tunewise report --test DIR` does the same by hand; a folder without eval.json is exit 2
    from typer.testing import CliRunner

    from tunewise.cli import app

    md_path.unlink()
    res = CliRunner().invoke(app, ["report", str(eval_dir), "--test", str(test_dir)])
    assert res.exit_code == 0, res.output
    assert "SEALED TEST SPLIT" in md_path.read_text()
    res = CliRunner().invoke(app, ["report", str(eval_dir), "--test", str(tmp_path)])
    assert res.exit_code == 2 and "no eval.json there" in res.output
    section = md.split("## SEALED TEST SPLIT")[1].split("\n## ")[0]
    assert "lora-r8" in section and "prompt (baseline)" in section
    assert "on test: SHIP lora-r8" in section or "on test: DON'T SHIP lora-r8" in section
