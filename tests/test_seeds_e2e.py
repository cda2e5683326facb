"""`tunewise run --seeds 2` end to end on the tiny model: two trainings that differ only in their
seed, a pooled candidate, the worst-seed reason on the verdict, and a fully cached rerun."""

from __future__ import annotations

import json

from test_workflow import make_project, statuses, write_cfg
from tunewise.config import load_project
from tunewise.eval.results import Comparison, EvalRun
from tunewise.ladder.workflow import run_ladder


def test_two_seeds_are_trained_pooled_and_gated_on_the_worst(tmp_path, tiny_model_dir) -> None:
    project = write_cfg(make_project(tmp_path / "proj"), tiny_model_dir)
    cfg = load_project(project)
    result = run_ladder(cfg, quiet=True, seeds=2)
    s = statuses(result)
    assert [n for n in s if n.startswith("train-")] == ["train-lora-seed0", "train-lora-seed1"]
    eval_dir = cfg.work_dir / "eval"
    run = EvalRun.load(eval_dir / "eval.json")
    assert run.meta["seed_groups"] == {"finetuned": ["finetuned@seed0", "finetuned@seed1"]}
    pooled = run.candidate("finetuned")
    assert pooled.kind == "pooled" and pooled.meta["seeds"] == [
        "finetuned@seed0",
        "finetuned@seed1",
    ]
    seeds = [run.candidate(f"finetuned@seed{k}") for k in (0, 1)]
    for i, it in enumerate(pooled.items):  # the pooled score is the mean of the two seeds
        mean = (seeds[0].items[i].scores["accuracy"] + seeds[1].items[i].scores["accuracy"]) / 2
        assert it.scores["accuracy"] == mean
    run_seeds = sorted(
        json.loads(p.read_text())["config"]["train"]["seed"]
        for p in (cfg.work_dir / "runs").glob("*/run.json")
    )
    assert run_seeds == [0, 1]
    comp = Comparison.load(eval_dir / "comparison.json")
    assert comp.meta["seed_groups"]["finetuned"] == ["finetuned@seed0", "finetuned@seed1"]
    verdict = json.loads((eval_dir / "verdict.json").read_text())
    assert verdict["candidate"] == "finetuned"
    worst = [r for r in verdict["reasons"] if r["baseline"] == "worst seed"]
    assert len(worst) == 1 and worst[0]["reason"].startswith("2 seeds: accuracy finetuned@seed0 ")
    assert "pooled over 2 seeds" in verdict["summary"]
    registry = json.loads((cfg.work_dir / "registry.json").read_text())
    # the group, registered once (beside the release rule's winner when that is a rung)
    assert [v for v in registry["versions"] if v != registry["release"]] == ["finetuned"]
    again = run_ladder(load_project(project), quiet=True, seeds=2)
    assert set(statuses(again).values()) == {"cached"}
