"""The ladder's evaluation stages: the baselines before training, every candidate after it, the
comparison and gate on an evaluation, the sealed test split, and the report on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunewise.candidates import CHAMPION
from tunewise.config import ProjectConfig
from tunewise.decide import comparison
from tunewise.decide.report_inputs import render_report
from tunewise.decide.seeds import pool_seeds
from tunewise.eval import harness  # a module: `evaluate` names a stage here
from tunewise.eval.learning_curve import CURVE_FILE
from tunewise.eval.results import EvalRun
from tunewise.ladder.plan import LadderPlan
from tunewise.ladder.stages import Outputs


def evaluate_baselines(plan: LadderPlan) -> Outputs:
    """The cheap rungs on validation, measured before any training."""
    out = plan.work / "eval-baselines"
    harness.evaluate(
        plan.cfg,
        split="val",
        candidates=plan.listed,
        out_dir=out,
        progress=not plan.quiet,
    )
    return {"eval": str(out / "eval.json")}


def evaluate_candidates(plan: LadderPlan) -> Outputs:
    """Every candidate on the same validation items (the baselines come back from the cache)."""
    # A curve measured against an older evaluation would mislead the advisor.
    (plan.eval_dir / CURVE_FILE).unlink(missing_ok=True)
    harness.evaluate(
        plan.cfg,
        split="val",
        candidates=plan.listed,
        finetuned=plan.runs | plan.champion,
        out_dir=plan.eval_dir,
        progress=not plan.quiet,
    )
    pool_seed_groups(plan.eval_dir, plan.groups)
    return {"eval": str(plan.eval_dir / "eval.json")}


def pool_seed_groups(eval_dir: Path, groups: dict[str, list[str]]) -> None:
    """Add each group's pooled candidate to eval.json and record the groups (--seeds N)."""
    if not groups:
        return
    run = EvalRun.load(eval_dir / "eval.json")
    run.candidates = [c for c in run.candidates if c.name not in groups]
    run.candidates += [pool_seeds(run, g, m) for g, m in groups.items()]
    run.meta["seed_groups"] = groups
    run.save(eval_dir / "eval.json")


def compare_and_gate(
    cfg: ProjectConfig,
    eval_dir: Path,
    finetuned: list[str],
    baselines: list[str],
    champion: str | None = None,
    champion_candidate: str = CHAMPION,
) -> dict[str, Any]:
    """comparison.json (:func:`tunewise.decide.comparison.build`) and a verdict per fine-tune."""
    run = EvalRun.load(eval_dir / "eval.json")
    comp = comparison.build(
        run,
        eval_dir,
        cfg.gate,
        gated=finetuned,
        baselines=baselines,
        champion=champion,
        champion_candidate=champion_candidate,
    )
    return comparison.gate_all(comp, eval_dir, cfg.gate, finetuned)


def final_test(plan: LadderPlan, gate_out: Outputs) -> Outputs:
    """The sealed test split, once: the shipped fine-tune (else every one) and exactly the
    candidates eval.candidates lists, as on validation (no constrained variant it does not list).
    """
    out = plan.work / "eval-test"
    shipped = gate_out.get("ship")
    members = plan.groups.get(shipped, [shipped])
    chosen = {k: v for k, v in plan.runs.items() if k in members} or plan.runs
    groups = {g: m for g, m in plan.groups.items() if set(m) <= set(chosen)}
    harness.evaluate(
        plan.cfg,
        split="test",
        candidates=plan.listed,
        finetuned=chosen,
        final=True,
        out_dir=out,
        progress=not plan.quiet,
    )
    pool_seed_groups(out, groups)
    seeded = {m for members in groups.values() for m in members}
    gated = [*groups, *(c for c in chosen if c not in seeded)]
    test_gate = compare_and_gate(plan.cfg, out, gated, plan.gate_bases)
    return {"eval": str(out / "eval.json"), "ship": test_gate.get("ship")}


def write_report(plan: LadderPlan, test_out: Outputs | None) -> Outputs:
    """The report on validation; with the sealed test split beside it after ``--final``."""
    test_dir = Path(test_out["eval"]).parent if test_out else None
    html, md = render_report(plan.eval_dir, list(plan.runs.values()), test_dir)
    return {"html": str(html), "md": str(md)}
