"""The ladder's training: one fine-tune into its run directory (resumed when an earlier attempt
left a checkpoint), and the learning curve, the same method retrained on subsets of train."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from tunewise.config import ProjectConfig
from tunewise.data.schema import load_examples
from tunewise.errors import UserError
from tunewise.eval import harness
from tunewise.eval.learning_curve import (
    CURVE_FILE,
    save_curve,
    stratified_order,
    subset_sizes,
    write_subset,
)
from tunewise.eval.results import EvalRun
from tunewise.eval.stats import compare
from tunewise.ladder.plan import LadderPlan
from tunewise.ladder.stages import Outputs
from tunewise.rundir import RunDir
from tunewise.train import record as train_record  # a module: tests replace last_checkpoint


def train_or_resume(
    cfg: ProjectConfig,
    run_dir: Path,
    method: str,
    con: Console,
    *,
    quiet: bool,
    train_path: Path | None = None,
    val_path: Path | None = None,
) -> None:
    """Train into ``run_dir``; resume from its last checkpoint when an earlier attempt left one."""
    from tunewise.train.trainer import train  # lazy: torch and transformers, ~3 s to import

    rd = RunDir(run_dir)
    status = rd.effective_status()
    resume = rd.has_record() and train_record.last_checkpoint(run_dir) is not None
    if resume:
        why = "interrupted run" if status == "interrupted" else "earlier attempt"
        con.print(
            f"resuming {method} ({why}) from its last checkpoint in {run_dir} "
            f"(as `{rd.resume_command()}` would)"
        )
    elif run_dir.exists():
        shutil.rmtree(run_dir)  # a start that died before its first checkpoint
    train(
        cfg,
        run_dir=run_dir,
        method=method,
        resume=resume,
        progress=not quiet,
        train_path=train_path,
        val_path=val_path,
    )


def train_subsets(
    plan: LadderPlan, method: str, full_name: str, train_key: str, context: str = "none"
) -> tuple[dict[str, Path], dict[str, int], int]:
    """``method`` trained on nested, label-stratified subsets of train (25%, 50%).

    Returns the runs by candidate name (``finetuned@N``), their sizes, and the size of train.
    """
    cfg = plan.cfg.model_copy(
        update={"train": plan.cfg.train.model_copy(update={"context": context})}
    )
    train_path = plan.work / "splits" / "train.jsonl"
    examples = load_examples(train_path, plan.cfg.task.tools)
    order = stratified_order(
        examples, seed=cfg.data.split.seed, output_pattern=cfg.task.output_pattern
    )
    lc = plan.work / "learning-curve"
    key = train_key[:10]  # the full run's key: split, train config, model and task
    runs: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    for n in subset_sizes(len(examples)):
        subset = write_subset(train_path, lc / f"train-{n}.jsonl", n, order)
        run_dir = lc / f"{method}-{n}-{key}"
        sub_cfg = cfg
        if cfg.train.max_steps:  # same epochs as the full run, not the same steps
            steps = max(1, round(cfg.train.max_steps * n / len(examples)))
            sub_cfg = cfg.model_copy(
                update={"train": cfg.train.model_copy(update={"max_steps": steps})}
            )
        plan.con.print(f"learning curve: {method} on {n} of {len(examples)} training examples")
        train_or_resume(
            sub_cfg,
            run_dir,
            method,
            plan.con,
            quiet=plan.quiet,
            train_path=subset,
            val_path=plan.work / "splits" / "val.jsonl",
        )
        runs[f"{full_name}@{n}"] = run_dir
        sizes[f"{full_name}@{n}"] = n
    return runs, sizes, len(examples)


def measure_learning_curve(
    plan: LadderPlan, method: str, full_name: str, train_key: str, context: str = "none"
) -> Outputs:
    """Train ``method`` on nested 25%/50% subsets, evaluate them on val, write the curve."""
    cfg = plan.cfg
    runs, sizes, n_train = train_subsets(plan, method, full_name, train_key, context)
    full = EvalRun.load(plan.eval_dir / "eval.json")
    pm = full.primary_metric
    # The full run's point is the ladder's own fine-tune; its CI only, not every candidate's.
    alone = replace(full, candidates=[full.candidate(full_name)])
    points = [(n_train, _metric(compare(alone, baselines=[]), full_name, pm))]
    if runs:
        # free generation only: the curve is read on the primary metric of the generated answers
        gen_cfg = cfg.model_copy(
            update={"eval": cfg.eval.model_copy(update={"constrained": False})}
        )
        sub = harness.evaluate(
            gen_cfg,
            split="val",
            candidates=[],
            finetuned=runs,
            out_dir=plan.work / "learning-curve" / "eval",
            progress=not plan.quiet,
        )
        comp = compare(sub, baselines=[])
        points += [(sizes[name], _metric(comp, name, pm)) for name in runs]
    out = plan.eval_dir / CURVE_FILE
    meta = {
        "metric": pm,
        "method": method,
        "split": "val",
        "runs": {str(sizes[k]): str(v) for k, v in runs.items()},
    }
    save_curve(out, points, meta)
    shown = ", ".join(f"{n}: {v:.3f}" for n, v in sorted(points))
    plan.con.print(f"learning curve ({pm}): {shown}")
    return {"curve": str(out), "points": sorted(points)}


def _metric(comp: Any, candidate: str, metric: str) -> float:
    score = comp.metrics.get(candidate, {}).get(metric)
    if score is None:
        raise UserError(f"learning curve: no {metric} for {candidate} in the evaluation")
    return float(score.value)
