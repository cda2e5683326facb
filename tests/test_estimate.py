"""The cost estimate: measured speed x the project's work, one line per part of the ladder."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from tunewise.config import load_project
from tunewise.data.schema import load_examples
from tunewise.ladder import estimate

SPEED = estimate.Speed(
    train_tps=100.0, prefill_tps=500.0, decode_step_s=0.1, decode_batch=4, source="test"
)
PARTS = [
    "baselines",
    "constrained scoring",
    "training",
    "evaluate the fine-tune",
    "final test (--final, once)",
]


def project(tmp_path: Path, n: int = 100, labels: int = 5, **eval_cfg) -> Path:
    names = [f"intent_{j}" for j in range(labels)]
    with open(tmp_path / "d.jsonl", "w") as fh:
        for i in range(n):
            msgs = [
                {"role": "system", "content": "Reply with one intent."},
                {"role": "user", "content": f"request number {i} about {names[i % labels]}"},
                {"role": "assistant", "content": names[i % labels]},
            ]
            fh.write(json.dumps({"messages": msgs}) + "\n")
    (tmp_path / "project.yaml").write_text(
        json.dumps(
            {
                "name": "est",
                "task": {"type": "labels", "system_prompt": "Reply with one intent."},
                "data": {"train": "d.jsonl", "split": {"val": 0.2, "test": 0.2}},
                # overfit_sample 0: the check's pricing is tested in test_val_budget.py
                "train": {"epochs": 2, "batch_size": 4, "eval_every": 10, "overfit_sample": 0},
                "eval": {"fewshot": {"k": 2}, "rag": {"k": 2, "sources": ["train"]}, **eval_cfg},
            }
        )
    )
    return tmp_path / "project.yaml"


def lines_for(path: Path, speed: estimate.Speed = SPEED, tokenizer=None):
    cfg = load_project(path)
    work = estimate.workload_of(cfg, load_examples(cfg.data.train), tokenizer)
    return work, {ln.stage: ln for ln in estimate.estimate(cfg, work, speed)}


def test_each_part_has_its_own_line_and_follows_the_speed(tmp_path):
    work, lines = lines_for(project(tmp_path))
    assert list(lines) == PARTS
    assert work.n_train == 60 and work.n_val == 20 and work.n_test == 20
    assert work.steps == 30 and work.label_combinations == 5
    # Training is tokens / training speed, plus the validation-loss passes at prompt speed.
    val_loss = 3 * 20 * work.example_tokens / SPEED.prefill_tps
    expected = work.train_tokens_per_epoch * 2 / SPEED.train_tps + val_loss
    assert lines["training"].seconds == pytest.approx(expected)
    # Constrained scoring: every item's prompt once plus 5 answers, for 3 rungs and the fine-tune.
    per_item = {r: work.prompt_tokens[r] + 5 * work.label_tokens for r in work.prompt_tokens}
    scored = 20 * (sum(per_item.values()) + per_item["prompt"]) / SPEED.prefill_tps
    assert lines["constrained scoring"].seconds == pytest.approx(scored)
    # Half the speed, twice the time: the estimate is the measurement, not a constant.
    _, slow = lines_for(project(tmp_path), replace(SPEED, train_tps=50.0, prefill_tps=250.0))
    assert slow["training"].seconds == pytest.approx(2 * lines["training"].seconds)
    assert slow["constrained scoring"].seconds == pytest.approx(2 * scored)
    # Few-shot and RAG prompts carry k earlier turns: they cost more than the bare prompt.
    assert work.prompt_tokens["fewshot"] > work.prompt_tokens["prompt"]
    gen = 20 * work.prompt_tokens["prompt"] / 500 + math.ceil(20 / 4) * work.max_new_tokens * 0.1
    assert work.prefix_tokens == 0  # no tokenizer here: nothing shared is counted
    assert lines["evaluate the fine-tune"].seconds == pytest.approx(gen)


def test_a_shared_prompt_prefix_is_paid_once_per_batch(tmp_path):
    work, lines = lines_for(project(tmp_path))
    shared = replace(work, prefix_tokens=10)
    cfg = load_project(tmp_path / "project.yaml")
    fewer = {ln.stage: ln for ln in estimate.estimate(cfg, shared, SPEED)}
    saved = 10 * (20 - math.ceil(20 / 4)) / SPEED.prefill_tps  # 20 items, batches of 4
    got = lines["evaluate the fine-tune"].seconds - fewer["evaluate the fine-tune"].seconds
    assert got == pytest.approx(saved)


def test_constrained_off_has_no_scoring_line(tmp_path):
    _, lines = lines_for(project(tmp_path, constrained=False))
    assert "constrained scoring" not in lines
    assert list(lines) == [p for p in PARTS if p != "constrained scoring"]


def test_many_labels_are_scored_one_field_at_a_time_cost_wise(tmp_path):
    work, _ = lines_for(project(tmp_path, n=200, labels=80))
    assert work.label_combinations == 80  # one field: every value once


def test_recorded_speed_takes_training_from_the_projects_last_run(tmp_path):
    home, work_dir = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    assert estimate.recorded_speed(home, "h" * 64, "cpu", work_dir) is None
    estimate.save_speed(home, "h" * 64, "cpu", SPEED)
    got = estimate.recorded_speed(home, "h" * 64, "cpu", work_dir)
    assert got is not None and got.train_tps == 100.0 and got.source.startswith("calibrated")
    assert estimate.recorded_speed(home, "h" * 64, "cuda:0", work_dir) is None  # per device
    run = work_dir / "runs" / "lora-abc"
    run.mkdir(parents=True)
    record = {
        "status": "completed",
        "base_model": {"weight_hash": "h" * 64},
        "tokens_trained": 10_000,  # the data's tokens, the shared prefix's repeats included
        "tokens_per_s": 50.0,  # tokens_trained / wall_time_s: not what the estimate divides
        "wall_time_s": 200.0,
        "shared_prefix": {"enabled": True, "tokens_not_recomputed": 6_000},
        "metrics": [{"step": 10, "val_loss_s": 60.0}, {"step": 20, "val_loss_s": 30.0}],
        "overfit_check_s": 10.0,
    }
    (run / "run.json").write_text(json.dumps(record))
    got = estimate.recorded_speed(home, "h" * 64, "cpu", work_dir)
    # 4,000 computed tokens in the 100 s that were not validation loss or the overfit check
    assert got.train_tps == pytest.approx(40.0)
    assert "training speed from run lora-abc" in got.source
    assert got.prefill_tps == SPEED.prefill_tps
    # A resumed run's figures span sessions, an unfinished one's are partial: the calibration.
    for change in ({"resumed_from": ["ckpt-10"]}, {"status": "running"}):
        (run / "run.json").write_text(json.dumps(record | change))
        got = estimate.recorded_speed(home, "h" * 64, "cpu", work_dir)
        assert got.train_tps == 100.0 and "training speed from" not in got.source


def test_calibrate_measures_this_machine(tiny_model_dir):
    from tunewise.runtime import models

    ref = models.resolve(str(tiny_model_dir))
    speed = estimate.calibrate(ref, "hello there, " * 40, eval_batch=16)
    for value in (speed.train_tps, speed.prefill_tps, speed.decode_step_s):
        assert math.isfinite(value) and value > 0
    assert speed.decode_batch == 16 and speed.score_tps > 0  # eval_batch=16 rows decode
    assert speed.source == "measured now on cpu"
    assert speed.train_tps == pytest.approx(speed.prefill_tps / estimate.TRAIN_COST_RATIO)


def test_a_context_trained_run_is_priced_with_its_longer_prompts(tmp_path):
    """train.variants [none, fewshot]: the context-trained run reads k retrieved examples more
    per training example and per validation-loss item, and is evaluated (and scored, and tested
    at --final) on the few-shot rung's prompt; the plain run keeps the plain figures."""
    path = project(tmp_path)
    cfg = load_project(path)
    work = estimate.workload_of(cfg, load_examples(cfg.data.train), None)
    one = {ln.stage: ln for ln in estimate.estimate(cfg, work, SPEED)}
    runs = {"train-lora": "none", "train-lora+fewshot": "fewshot"}
    two = {ln.stage: ln for ln in estimate.estimate(cfg, work, SPEED, runs=runs)}
    extra = work.context_tokens["fewshot"]
    assert extra == pytest.approx(work.prompt_tokens["fewshot"] - work.prompt_tokens["prompt"])
    assert extra > 0
    per_run = two["training"].stages
    assert per_run["train-lora"] == pytest.approx(one["training"].seconds)
    # 60 training examples x 2 epochs at 100 tokens/s, 3 validation-loss passes over 20 items
    more = extra * 60 * 2 / SPEED.train_tps + 3 * 20 * extra / SPEED.prefill_tps
    assert per_run["train-lora+fewshot"] == pytest.approx(one["training"].seconds + more)
    assert two["training"].seconds == pytest.approx(sum(per_run.values()))
    assert "train.context fewshot: +" in two["training"].detail
    # Evaluated on the few-shot prompt: what the few-shot rung's generation costs.
    fewshot_gen = estimate._generation_s(SPEED, work, work.prompt_tokens["fewshot"], 20)
    got = two["evaluate the fine-tune"].seconds - one["evaluate the fine-tune"].seconds
    assert got == pytest.approx(fewshot_gen)
    scored = estimate._scoring_s(SPEED, work, work.prompt_tokens["fewshot"], 20)
    got = two["constrained scoring"].seconds - one["constrained scoring"].seconds
    assert got == pytest.approx(scored)
    # --final tests every fine-tune when none ships: both are priced, with their own prompts.
    test_more = estimate._generation_s(SPEED, work, work.prompt_tokens["fewshot"], 20)
    test_more += estimate._scoring_s(SPEED, work, work.prompt_tokens["fewshot"], 20)
    final = "final test (--final, once)"
    assert two[final].seconds - one[final].seconds == pytest.approx(test_more)
    assert "up to 2 fine-tunes" in two[final].detail
    assert "over data.max_len" not in two["training"].detail
    # Context that pushes the longest example past data.max_len is said before anything runs.
    short = cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_len": 16})})
    tight = {ln.stage: ln for ln in estimate.estimate(short, work, SPEED, runs=runs)}
    assert "at the longest: over data.max_len=16" in tight["training"].detail


def test_the_final_test_prices_the_listed_rungs_not_the_gates_extra_ones(tmp_path):
    """--final evaluates eval.candidates (as validation did): a rung left out of the list is
    neither run nor priced."""
    path = project(tmp_path, candidates=["prompt", "fewshot", "finetuned"], constrained=False)
    raw = json.loads(path.read_text())
    raw["gate"] = {"baselines": ["prompt", "fewshot"]}  # a gate baseline must be evaluated
    path.write_text(json.dumps(raw))
    cfg = load_project(path)
    work = estimate.workload_of(cfg, load_examples(cfg.data.train), None)
    lines = {ln.stage: ln for ln in estimate.estimate(cfg, work, SPEED)}
    expected = sum(
        estimate._generation_s(SPEED, work, work.prompt_tokens[r], 20)
        for r in ("prompt", "fewshot", "prompt")  # two rungs and the plain fine-tune
    )
    assert lines["final test (--final, once)"].seconds == pytest.approx(expected)
    assert "2 listed rung(s) and the fine-tune" in lines["final test (--final, once)"].detail


def test_own_split_files_and_several_references_are_counted_as_run(tmp_path):
    # The trainer trains each reference (1 + 2 per input) and the evaluator scores each input of
    # the user's own val file once; the train file gives nothing to val or test.
    def rows(n, refs):
        return "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Venue{i} | food | Thai"},
                        {"role": "assistant", "content": f"Venue{i} serves Thai food."},
                    ],
                    "references": [f"Thai food at Venue{i} ({k})." for k in range(refs)],
                }
            )
            + "\n"
            for i in range(n)
        )

    (tmp_path / "train.jsonl").write_text(rows(40, 2))
    (tmp_path / "val.jsonl").write_text(rows(12, 1))
    (tmp_path / "test.jsonl").write_text(rows(9, 0))
    (tmp_path / "project.yaml").write_text(
        "name: d2t\n"
        "data: {train: train.jsonl, val: val.jsonl, test: test.jsonl}\n"
        "task: {type: text}\n"
        "eval: {candidates: [prompt], graders: [chrf], primary_metric: chrf}\n"
        "gate: {baselines: [prompt]}\n"
        "train: {batch_size: 8, epochs: 1}\n"
    )
    cfg = load_project(tmp_path / "project.yaml")
    w = estimate.workload_of(cfg, load_examples(cfg.data.train), None)
    assert (w.n_train, w.n_val) == (120, 12)
    assert w.steps == 15  # 120 rows / 8
