"""End to end on the tiny model: `tunewise gate` evaluates the production version on the same
items, records the regression check on the verdict, and `registry promote` obeys it; the same run
under `gate.mode: non_inferiority` gives a verdict with margin, one-sided bound and cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from _ship_helpers import make_run, write_verdict
from test_harness import write_project
from tunewise.cli import app
from tunewise.config import load_project
from tunewise.errors import UserError
from tunewise.eval.harness import evaluate
from tunewise.eval.results import EvalRun
from tunewise.registry.store import Registry


def _identity_adapter(tiny_model_dir: Path, run_dir: Path) -> Path:
    """A LoRA run whose B matrices are zero: it answers exactly like the base model."""
    make_run(tiny_model_dir, run_dir, seed=5, name="tickets")
    path = run_dir / "adapter_model.safetensors"
    tensors = load_file(path)
    save_file({k: v * 0 if "lora_B" in k else v for k, v in tensors.items()}, path)
    return run_dir


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir: Path) -> Path:
    path = write_project(tmp_path, constrained=False, classical=False)
    raw = yaml.safe_load(path.read_text())
    raw["model"] = {"base": str(tiny_model_dir)}
    raw["data"]["split"] = {"val": 0.4, "test": 0.1}  # 24 validation items
    raw["eval"].update({"candidates": ["prompt"], "max_new_tokens": 4})
    raw["gate"] = {"baselines": ["prompt"]}  # a gate baseline must be evaluated (config rule)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_gate_checks_the_production_version_and_promote_obeys(
    project: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    reg = Registry()
    champion = make_run(tiny_model_dir, tmp_path / "v1", seed=1, name="tickets")
    reg.add(champion, name="tickets", verdict=write_verdict(tmp_path / "v1.json", True))
    reg.promote("tickets", 1)
    challenger = _identity_adapter(tiny_model_dir, tmp_path / "v2")
    eval_dir = tmp_path / "ev"
    cfg = load_project(project)
    evaluate(cfg, finetuned={"finetuned": challenger}, out_dir=eval_dir, progress=False)

    runner = CliRunner()
    r = runner.invoke(app, ["gate", str(eval_dir), "-c", "finetuned", "-p", str(project)])
    assert r.exit_code == 1, r.output  # don't ship
    run = EvalRun.load(eval_dir / "eval.json")
    prod = run.candidate("production")  # evaluated by `gate`, on the same items
    assert prod.kind == "champion" and [i.item_id for i in prod.items] == run.item_ids
    assert len(run.item_ids) == 24
    verdict = json.loads((eval_dir / "verdict.json").read_text())
    champ = verdict["champion"]
    assert champ["version"] == "tickets:1" and champ["passed"] is False
    assert "24 tied items cannot rule out a drop of 0.01" in champ["reason"]
    comp = json.loads((eval_dir / "comparison.json").read_text())
    assert comp["meta"]["champion"] == {"candidate": "production", "version": "tickets:1"}
    # every candidate the release rule may pick faces production: the fine-tune and the rung
    assert [(t["candidate"], t["reference"]) for t in comp["margin_tests"]] == [
        ("finetuned", "production"),
        ("prompt", "production"),
    ]
    from tunewise.decide.report_inputs import render_report as render

    html, md = render(eval_dir)
    text = md.read_text()
    assert "## Champion vs challenger: finetuned vs production (tickets:1)" in text
    assert "24 items:" in text and 'id="champion"' in html.read_text()
    v2 = reg.add(challenger, name="tickets", verdict=eval_dir / "verdict.json")
    with pytest.raises(UserError, match=r"not shown within 0\.01 of production \(tickets:1\)"):
        reg.promote("tickets", v2.version)

    # The same evaluation under non-inferiority: not worse than the base prompt by 0.2, and not
    # worse than production by 0.2 (the identity adapter answers like the base model).
    raw = yaml.safe_load(project.read_text())
    raw["gate"] = {
        "mode": "non_inferiority",
        "reference": "prompt",
        "margin": 0.2,
        "regression_margin": 0.2,
        "baselines": [],
        "cost": {
            "requests_per_day": 20_000,
            "tokens_per_request": 400,
            "api_price_per_mtok": 5.0,
            "gpu_price_per_hour": 2.0,
        },
    }
    project.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["gate", str(eval_dir), "-c", "finetuned", "-p", str(project)])
    verdict = json.loads((eval_dir / "verdict.json").read_text())
    first = verdict["reasons"][0]["reason"]
    assert "margin 0.2" in first and "one-sided 95% lower bound" in first
    # $48/day over 20,000 requests; the reference is the base model, self-hosted as well
    assert (
        "cost per 1,000 requests: finetuned $2.40 (self-hosted) vs prompt $2.40"
        in (verdict["summary"])
    )
    assert r.exit_code == 0 and verdict["ship"], verdict["summary"]
    assert verdict["champion"]["passed"] and verdict["champion"]["version"] == "tickets:1"
    v3 = reg.add(challenger, name="tickets", verdict=eval_dir / "verdict.json")
    assert reg.promote("tickets", v3.version)["to_version"] == v3.version
