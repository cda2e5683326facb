"""``tunewise run --dry-run``: the stage plan with estimates; nothing run, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunewise.cli import app
from tunewise.config import load_project
from tunewise.ladder import estimate, workflow

STAGES = ("_check", "_split", "_evaluate_baselines", "_train_or_resume", "_evaluate", "_register")


def make_project(root: Path, model_dir: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cats = ["billing", "shipping", "login"]
    with open(root / "data.jsonl", "w") as fh:
        for i in range(60):
            msgs = [
                {"role": "system", "content": "Classify the ticket."},
                {"role": "user", "content": f"ticket {i} about {cats[i % 3]} things"},
                {"role": "assistant", "content": f"Category: {cats[i % 3]}"},
            ]
            fh.write(json.dumps({"messages": msgs}) + "\n")
    raw = {
        "name": "dry",
        "task": {
            "type": "labels",
            "system_prompt": "Classify the ticket.",
            "output_pattern": r"^Category: (?P<category>.+)$",
        },
        "data": {"train": "data.jsonl", "split": {"val": 0.2, "test": 0.2, "seed": 0}},
        "model": {"base": str(model_dir)},
        "train": {"method": "lora", "epochs": 1, "batch_size": 4},
        "eval": {"rag": {"sources": ["train"]}},
    }
    (root / "project.yaml").write_text(yaml.safe_dump(raw))
    return root / "project.yaml"


def snapshot(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


@pytest.fixture
def no_stage_may_run(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run ran a stage")

    for name in STAGES:
        monkeypatch.setattr(workflow, name, refuse)


def test_dry_run_prints_the_plan_with_estimates_and_runs_nothing(
    tmp_path, tiny_model_dir, no_stage_may_run
):
    path = make_project(tmp_path / "proj", tiny_model_dir)
    before = snapshot(tmp_path / "proj")
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run", "--final"])
    assert result.exit_code == 0, result.output
    out = result.output
    for stage in ("check", "split", "baselines", "train-lora", "evaluate", "final-test"):
        assert f"│ {stage} " in out, out
    assert out.count("would run") == 9  # 8 stages of the ladder and the final test
    for part in ("baselines: ~", "constrained scoring: ~", "training: ~", "final test"):
        assert part in out, out
    assert "speed: measured now on cpu" in out  # no calibration recorded: measured, in memory
    assert "dry run: nothing was run or written" in out
    assert snapshot(tmp_path / "proj") == before  # no .tunewise, no split, no state
    assert not (tmp_path / "proj" / ".tunewise").exists()


def test_dry_run_uses_the_recorded_speed_and_marks_cached_stages(
    tmp_path, tiny_model_dir, monkeypatch, no_stage_may_run
):
    from tunewise import paths
    from tunewise.runtime import device, models

    path = make_project(tmp_path / "proj", tiny_model_dir)
    cfg = load_project(path)
    ref = models.resolve(str(tiny_model_dir))
    speed = estimate.Speed(100.0, 1000.0, 0.01, 4, "x", score_tps=800.0)
    placement = device.for_project(cfg, "infer")
    estimate.save_speed(paths.home(), ref.weight_hash, placement.device, speed)

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibrated although a speed was recorded")

    monkeypatch.setattr(estimate, "calibrate", no_calibration)
    # The check stage as a finished run would have recorded it: same key, its file present.
    from tunewise.ladder import dryrun

    original, shown = dryrun.show_plan, []
    monkeypatch.setattr(dryrun, "show_plan", lambda cfg, stages, *a, **kw: shown.append(stages))
    workflow.run_ladder(cfg, dry_run=True, quiet=True)
    monkeypatch.setattr(dryrun, "show_plan", original)
    check = shown[0][0]
    work = cfg.work_dir
    work.mkdir()
    (work / "check.json").write_text("{}")
    state = {"check": {"key": check.key, "outputs": {}, "paths": [str(work / "check.json")]}}
    (work / "ladder.json").write_text(json.dumps(state))
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "calibrated" in result.output and "on cpu" in result.output
    check_row = next(ln for ln in result.output.splitlines() if "│ check " in ln)
    assert "cached" in check_row and "would run" not in check_row
    assert result.output.count("would run") == 7


def registry_snapshot(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in [root, *root.rglob("*")]}


def test_dry_run_writes_nothing_into_an_empty_home(tmp_path, tiny_model_dir, tunewise_home):
    path = make_project(tmp_path / "proj", tiny_model_dir)
    tunewise_home.mkdir()
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert list(tunewise_home.iterdir()) == []  # no registry folder, no index


def test_dry_run_reads_the_production_version_without_touching_the_registry(
    tmp_path, tiny_model_dir, no_stage_may_run
):
    from _ship_helpers import make_run, write_verdict
    from tunewise.registry.store import Registry

    path = make_project(tmp_path / "proj", tiny_model_dir)
    reg = Registry()
    run = make_run(tiny_model_dir, tmp_path / "v1", seed=1, name="dry")
    v1 = reg.add(run, name="dry", verdict=write_verdict(tmp_path / "v1.json", True))
    reg.promote("dry", 1)
    # a damaged weights blob: resolving the version would hash it and refuse
    weights = next(d for rel, d in v1.files.items() if rel.endswith(".safetensors"))
    blob = reg.blob_path(weights)
    blob.chmod(0o644)
    blob.write_bytes(b"damaged")
    before = registry_snapshot(reg.root)
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "champion: dry:1 (production) is evaluated beside the new runs" in result.output
    assert registry_snapshot(reg.root) == before  # no -wal/-shm, no materialised version
    assert not (reg.versions_dir / "dry").exists()


def test_dry_run_prices_a_context_trained_variant_on_its_own(
    tmp_path, tiny_model_dir, monkeypatch, no_stage_may_run
):
    """train.variants [none, fewshot]: two training rows, the context-trained one dearer (its
    examples carry the retrieved ones), and the stage table shows each run's own estimate."""
    from tunewise.ladder import dryrun

    path = make_project(tmp_path / "proj", tiny_model_dir)
    raw = yaml.safe_load(path.read_text())
    raw["train"]["variants"] = ["none", "fewshot"]
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(
        estimate,
        "calibrate",
        lambda *a, **kw: estimate.Speed(10.0, 1000.0, 0.01, 4, "fixed", score_tps=800.0),
    )
    priced = []
    original = dryrun._by_stage
    monkeypatch.setattr(
        dryrun, "_by_stage", lambda lines: priced.append(original(lines)) or priced[-1]
    )
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "│ train-lora " in result.output and "│ train-lora+fewshot " in result.output
    seconds = priced[0]
    assert seconds["train-lora+fewshot"] > seconds["train-lora"] > 0
    assert "2 runs; train.context fewshot: +" in result.output
