"""``tunewise run --dry-run``: the ladder's stages, which are cached, and what the rest will cost.

Nothing runs and nothing is written: the stages are built exactly as
:func:`tunewise.ladder.workflow.run_ladder` builds them (so the cached / to-run column is the one a
real run would find), then priced with :mod:`tunewise.ladder.estimate` at this machine's speed: the
last calibration recorded by ``tunewise init`` (and the project's last training run), else a
calibration now, in memory. A model that is not converted or downloaded yet is not converted here;
the plan is then shown with token counts from characters and without times.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from tunewise import paths
from tunewise.config import ProjectConfig
from tunewise.data.schema import load_examples
from tunewise.errors import UserError
from tunewise.ladder import estimate  # a module: tests replace estimate.calibrate
from tunewise.ladder.estimate import CostLine, Speed, human_time
from tunewise.runtime import chat, device, models

# Stages that read and write a few files: seconds, whatever the data.
QUICK = ("check", "split", "compare-gate", "registry", "report", "mlflow")


def show_plan(
    cfg: ProjectConfig,
    stages: Sequence[Any],
    cached: Sequence[bool],
    console: Console,
    *,
    runs: Mapping[str, str],
    notes: Sequence[str] = (),
) -> None:
    """Print the stage plan with an estimate per stage to run, the total, and ``notes``.
    ``runs``: each training stage's name and ``train.context``."""
    lines, speed, why = _price(cfg, runs)
    per_stage = _by_stage(lines)
    table = Table(title=f"tunewise run --dry-run: {cfg.name}")
    for col in ("#", "stage", "status", "estimate"):
        table.add_column(col, justify="right" if col in ("#", "estimate") else "left")
    total = 0.0
    for i, (stage, is_cached) in enumerate(zip(stages, cached, strict=True), start=1):
        name = stage.name
        if is_cached:
            table.add_row(str(i), name, "[dim]cached[/]", "0 s")
            continue
        seconds = per_stage.get(name)
        if seconds is None:
            shown = "seconds" if name in QUICK else "?"
        else:
            total += seconds
            shown = human_time(seconds)
        table.add_row(str(i), name, "would run", shown)
    console.print(table)
    if speed is not None:
        console.print(f"speed: {speed.source}", highlight=False)
        for line in lines:
            console.print(f"  {line.render()}", highlight=False, soft_wrap=True)
        console.print(f"total of the stages to run: {human_time(total)}", highlight=False)
    else:
        console.print(f"no time estimate: {why}", highlight=False, soft_wrap=True)
    for note in notes:
        console.print(note, highlight=False, soft_wrap=True)
    console.print("dry run: nothing was run or written", highlight=False)


def _by_stage(lines: list[CostLine]) -> dict[str, float]:
    """Seconds per stage, from the estimate's lines (the training line has one per run)."""
    out: dict[str, float] = {}
    by_name = {line.stage: line for line in lines}
    for line in lines:
        for stage, seconds in line.stages.items():
            out[stage] = out.get(stage, 0.0) + seconds
    if "baselines" in by_name:
        out["baselines"] = out.get("baselines", 0.0) + by_name["baselines"].seconds
    training = by_name.get("training")
    tuned_eval = by_name.get("evaluate the fine-tune")
    if tuned_eval is not None:
        out["evaluate"] = out.get("evaluate", 0.0) + tuned_eval.seconds
    if training is not None and training.stages and tuned_eval is not None:
        # 25% and 50% of train for the first run: three quarters of its training, and two
        # evaluations of free generation
        first = next(iter(training.stages.values()))
        out["learning-curve"] = 0.75 * first + 2 * tuned_eval.seconds / len(training.stages)
    final = next((ln for ln in lines if ln.stage.startswith("final")), None)
    if final is not None:
        out["final-test"] = final.seconds
    return out


def _price(cfg: ProjectConfig, runs: Mapping[str, str]) -> tuple[list[CostLine], Speed | None, str]:
    """(cost lines, the speed they used, why there are none) without writing anything."""
    examples = load_examples(cfg.data.train, cfg.task.tools)
    try:
        ref = _local_model(cfg.model.base)
    except UserError as err:
        ref, why = None, str(err)
    tok = models.load_tokenizer(ref) if ref is not None else None
    work = estimate.workload_of(cfg, examples, tok, sizes=_split_sizes(cfg))
    if ref is None:
        return [], None, why
    placement = device.for_project(cfg, "infer")
    speed = estimate.recorded_speed(paths.home(), ref.weight_hash, placement.device, cfg.work_dir)
    if speed is None:
        text = chat.render_for_count(tok, examples[0].with_system(cfg.task.system_prompt).messages)
        speed = estimate.calibrate(
            ref,
            text,
            placement=placement,
            eval_batch=cfg.eval.batch_size,
        )
    return estimate.estimate(cfg, work, speed, runs=runs), speed, ""


def _local_model(name: str) -> Any:
    """The model if it is on this machine already; a :class:`UserError` saying how to get it."""
    if name in models.EMBEDDED and not (paths.models_dir() / name / models.MARKER).is_file():
        raise UserError(
            f"{name} is not converted yet (a dry run converts nothing): "
            f"`tunewise models pull {name}` converts it into {paths.models_dir()}"
        )
    return models.resolve(name, allow_download=False)


def _split_sizes(cfg: ProjectConfig) -> tuple[int, int, int] | None:
    """(train, val, test) of the project's split when it exists."""
    try:
        counts = json.loads((cfg.work_dir / "splits" / "manifest.json").read_text())["counts"]
        return int(counts["train"]), int(counts["val"]), int(counts["test"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
