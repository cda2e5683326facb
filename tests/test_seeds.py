"""Seed variance: pooling seeds item by item, the spread, and the gate's worst-seed rule on
constructed evaluations (ties, tiny samples, a single seed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from _evalfakes import binary_run
from tunewise.config import GateConfig
from tunewise.decide.gate import decide
from tunewise.decide.seeds import pool_seeds, seed_name, seed_spread
from tunewise.eval.stats import compare

GATE = GateConfig(baselines=["prompt"])
SEEDS = [seed_name("finetuned", k) for k in range(3)]


def _pooled_comparison(columns: dict[str, list[int]]):
    run = binary_run(columns)
    members = [c for c in columns if c.startswith("finetuned@")]
    run.candidates.append(pool_seeds(run, "finetuned", members))
    comp = compare(run, baselines=["prompt"], n_boot=1000)
    comp.meta["seed_groups"] = {"finetuned": members}
    return run, comp


def test_pooling_averages_each_item_over_the_seeds() -> None:
    run = binary_run({"prompt": [0, 0, 1], SEEDS[0]: [1, 0, 1], SEEDS[1]: [1, 1, 0]})
    run.candidate(SEEDS[1]).items[2].scores["accuracy"] = float("nan")
    pooled = pool_seeds(run, "finetuned", SEEDS[:2])
    assert [it.scores["accuracy"] for it in pooled.items] == [1.0, 0.5, 1.0]  # NaN left out
    assert pooled.kind == "pooled" and pooled.meta["seeds"] == SEEDS[:2]
    assert all(it.gold is None for it in pooled.items)  # no labels: seeds may disagree
    with pytest.raises(ValueError, match="at least two"):
        pool_seeds(run, "finetuned", SEEDS[:1])


def test_the_worst_seed_must_clear_every_baseline_too() -> None:
    rng = np.random.default_rng(0)
    n = 300
    prompt = (rng.random(n) < 0.5).astype(int).tolist()
    strong = [1 if rng.random() < 0.85 else p for p in prompt]
    weak = [p if rng.random() < 0.9 else 1 - p for p in prompt]  # no better than the prompt
    _, comp = _pooled_comparison(
        {"prompt": prompt, SEEDS[0]: strong, SEEDS[1]: strong, SEEDS[2]: weak}
    )
    v = decide(comp, "finetuned", GATE)
    assert v.reasons[0].passed  # the pooled test passes ...
    last = v.reasons[-1]
    assert last.baseline == "worst seed" and not last.passed  # ... the worst seed does not
    assert "the worst seed (finetuned@seed2) does not clearly beat prompt" in last.reason
    assert last.reason.startswith("3 seeds: accuracy finetuned@seed0 ")
    assert v.summary.startswith("DON'T SHIP finetuned: the pooled test over 3 seeds passes")
    spread = seed_spread(comp, SEEDS, "accuracy")
    assert spread["worst"] == SEEDS[2] and spread["max"] > spread["min"] and spread["sd"] > 0


def test_every_seed_clearly_better_ships_and_says_so() -> None:
    rng = np.random.default_rng(1)
    n = 300
    prompt = (rng.random(n) < 0.4).astype(int).tolist()
    cols = {"prompt": prompt}
    for s in SEEDS:
        cols[s] = [1 if rng.random() < 0.8 else p for p in prompt]
    _, comp = _pooled_comparison(cols)
    v = decide(comp, "finetuned", GATE)
    assert v.ship and v.summary.endswith("(pooled over 3 seeds, and the worst seed too)")
    assert "also beats prompt" in v.reasons[-1].reason


def test_tied_seeds_and_tiny_samples() -> None:
    same = [1, 1, 1, 0, 1, 1]
    _, comp = _pooled_comparison({"prompt": [0] * 6, SEEDS[0]: same, SEEDS[1]: same})
    spread = seed_spread(comp, SEEDS[:2], "accuracy")
    assert spread["worst"] == SEEDS[0] and spread["sd"] == 0.0  # a tie: the first name
    v = decide(comp, "finetuned", GATE)
    # 5 of 6 right against 0 of 6: too few items for the exact test on the worst seed
    assert not v.ship and "does not clearly beat prompt" in v.reasons[-1].reason


def test_a_single_seed_or_a_plain_candidate_is_untouched() -> None:
    run = binary_run({"prompt": [0] * 40, "finetuned": [1] * 40})
    comp = compare(run, baselines=["prompt"], n_boot=500)
    plain = decide(comp, "finetuned", GATE)
    comp.meta["seed_groups"] = {"finetuned": ["finetuned"]}
    assert decide(comp, "finetuned", GATE) == plain and len(plain.reasons) == 1
    spread = seed_spread(comp, ["missing"], "accuracy")
    assert spread["worst"] is None and math.isnan(spread["sd"])
