"""What a report is drawn from, made complete: the one place the report's comparison and
verdicts come from when ``tunewise report`` (or a test) asks for a report of any evaluation.

An evaluation with no current comparison.json gets one (:func:`tunewise.decide.comparison.build`,
the same builder as the ladder's); one with no verdict saved for it gets the gate's verdicts, marked
provisional. Saved verdicts drawn from an older evaluation are not shown (nor deleted: they are the
user's files). The report itself (:mod:`tunewise.eval.report`) only reads what arrives here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tunewise.decide import comparison
from tunewise.eval import report
from tunewise.eval.report_tables import ReportInputs, saved_verdicts
from tunewise.eval.results import EVAL_FILE, EvalRun, gate_config_from_meta


def report_inputs(eval_dir: Path) -> ReportInputs:
    """eval.json, its comparison (built and saved when missing or stale), and its verdicts."""
    run = EvalRun.load(eval_dir / EVAL_FILE)
    gate_cfg = gate_config_from_meta(run.meta)
    comp = comparison.load_current(run, eval_dir, gate_cfg)
    stale = comp is None
    if comp is None:
        gated = [c.name for c in run.candidates if c.name not in gate_cfg.baselines]
        comp = comparison.build(run, eval_dir, gate_cfg, gated=gated)
    verdicts = [] if stale else saved_verdicts(eval_dir)
    if verdicts:
        return ReportInputs(eval_dir, run, comp, gate_cfg, verdicts, provisional=False)
    provisional = comparison.provisional_verdicts(comp, gate_cfg)
    return ReportInputs(eval_dir, run, comp, gate_cfg, provisional, provisional=True)


def render_report(
    eval_dir: str | Path, train_runs: Sequence[str | Path] = (), test_dir: str | Path | None = None
) -> tuple[Path, Path]:
    """Write ``EVAL_DIR/report.html`` and ``report.md``; with ``test_dir`` (the sealed test
    evaluation, when it was run), both cover it too."""
    sealed = None
    if test_dir is not None and (Path(test_dir) / EVAL_FILE).is_file():
        sealed = report_inputs(Path(test_dir))
    return report.render(report_inputs(Path(eval_dir)), train_runs, sealed)
