"""The ladder's first two stages: the data check and the split (the test split sealed)."""

from __future__ import annotations

from rich.markup import escape

from tunewise.data.checks import check_file
from tunewise.data.own_splits import split_project
from tunewise.errors import UserError
from tunewise.fsio import atomic_write_json
from tunewise.ladder.plan import LadderPlan, data_files
from tunewise.ladder.stages import Outputs


def check_data(plan: LadderPlan) -> Outputs:
    """Data check (train, and your own val/test files): errors stop the ladder, warnings are
    shown and recorded."""
    cfg = plan.cfg
    outputs: Outputs = {}
    for name, path in data_files(cfg).items():
        report = check_file(
            path,
            model=cfg.model.base,
            max_len=cfg.data.max_len,
            output_pattern=cfg.task.output_pattern,
            tools=cfg.task.tools,
        )
        out = plan.work / ("check.json" if name == "train" else f"check-{name}.json")
        atomic_write_json(out, report.to_json())
        if report.errors:
            first = report.errors[0]
            raise UserError(
                f"{first} ({len(report.errors)} error(s); run `tunewise data check {path}`)"
            )
        plan.con.print(f"{name}: {len(report.warnings)} warning(s); details in {out}")
        outputs["report" if name == "train" else f"report_{name}"] = str(out)
    return outputs


def split_data(plan: LadderPlan) -> Outputs:
    """Train / validation / test, with the test split sealed."""
    splits = plan.work / "splits"
    manifest = split_project(plan.cfg, splits)  # data.val / data.test are used as given
    for w in manifest.get("warnings", []):  # leakage and label gaps of your own files
        plan.con.print(f"[yellow]{w['kind']}[/]: {escape(w['message'])}", soft_wrap=True)
    return {"manifest": str(splits / "manifest.json"), "counts": manifest.get("counts", {})}
