"""``tunewise compare-traffic DIR``: production and its shadow challenger on live traffic."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from tunewise.config import load_project
from tunewise.errors import UserError
from tunewise.fsio import atomic_write_json
from tunewise.numbers import cell, p_cell, signed_cell
from tunewise.progress import make_console

if TYPE_CHECKING:
    from tunewise.eval.traffic_compare import Group, TrafficComparison

console = make_console()

_DIR = typer.Argument(
    ..., help="the traffic log folder (serve --log-traffic DIR --shadow ...)", file_okay=False
)
_LABELS = typer.Option(
    None,
    "--labels",
    help="labelled requests: tunewise JSONL lines with origin.traffic_id (data from-traffic, "
    "rate, a teacher); the paired metric is computed on them",
    dir_okay=False,
)
_PROJECT = typer.Option(
    None,
    "--project",
    "-p",
    help="project.yaml: score with its graders and primary metric (default: exact match)",
)
_JSON = typer.Option(None, "--json", help="also write the figures here (atomic)", dir_okay=False)


def compare_traffic_cmd(
    traffic_dir: Path = _DIR,
    labels: Path | None = _LABELS,
    project: Path | None = _PROJECT,
    json_out: Path | None = _JSON,
    alpha: float | None = typer.Option(None, help="significance level (default: gate.alpha)"),
    n_boot: int = typer.Option(2000, "--n-boot", help="bootstrap resamples"),
    seed: int = typer.Option(0, help="bootstrap seed"),
    ci: str = typer.Option("bca", help="bootstrap interval: bca or percentile"),
) -> None:
    """Agreement of production and the shadow challenger, and their paired metric on labels."""
    # lazy: scipy and the graders; keeps --help fast
    from tunewise.eval.graders import Grader
    from tunewise.eval.traffic_compare import StatSettings, compare_traffic, load_labels
    from tunewise.serve.traffic import SHADOW, iter_traffic, traffic_files

    if ci not in ("bca", "percentile"):
        raise UserError(f"--ci must be bca or percentile, got {ci!r}")
    if not traffic_dir.is_dir():
        raise UserError(f"{traffic_dir}: no such directory")
    if not traffic_files(traffic_dir):
        raise UserError(
            f"{traffic_dir}: no traffic-*.jsonl files (serve --log-traffic {traffic_dir})"
        )
    cfg = load_project(project) if project else None
    tools = cfg.task.tools if cfg is not None and isinstance(cfg.task.tools, list) else None
    found = load_labels(labels, tools) if labels else None
    stats = StatSettings(
        alpha=alpha if alpha is not None else (cfg.gate.alpha if cfg else 0.05),
        n_boot=n_boot,
        seed=seed,
        ci_method=ci,  # type: ignore[arg-type]
    )
    train = [lab.example for lab in (found or {}).values()]  # the label set, when not in config
    result = compare_traffic(
        iter_traffic(traffic_dir),
        iter_traffic(traffic_dir, SHADOW),
        found,
        grader=Grader(cfg, train) if cfg is not None else None,
        primary_metric=cfg.eval.primary_metric if cfg is not None else None,
        project=cfg.name if cfg is not None else "traffic",
        stats=stats,
    )
    _print(result)
    if json_out is not None:
        atomic_write_json(json_out, result.to_dict())
        console.print(f"wrote {json_out}")


def _print(result: TrafficComparison) -> None:
    c = result.counts
    console.print(
        f"{c['requests']} request(s), {c['paired']} answered by both, "
        f"{c['unshadowed']} without a shadow answer, {c['shadow_failed']} shadow failure(s), "
        f"{c['orphan_shadows']} shadow answer(s) without their request"
    )
    if c.get("labels"):
        console.print(
            f"{c['labels']} label(s): {c['labels_paired']} on requests both answered, "
            f"{c['labels_without_shadow']} without a shadow answer, "
            f"{c['labels_without_request']} naming no request in the log"
        )
    table = Table(title="agreement (calls by name + arguments where either side called)")
    for col in ("production", "shadow", "pairs", "agree", "same text", "with calls", "same calls"):
        table.add_column(col, justify="left" if col in ("production", "shadow") else "right")
    for g in result.groups:
        d = g.to_dict()
        table.add_row(
            escape(g.production),
            escape(g.shadow),
            str(d["pairs"]),
            f"{d['agree']} ({cell(d['agreement'])})",
            f"{d['text_agree']} ({cell(d['text_agreement'])})",
            str(d["with_calls"]),
            f"{d['calls_agree']} ({cell(d['call_agreement'])})" if d["with_calls"] else "–",
        )
    if table.row_count:
        console.print(table)
    for g in result.groups:
        if g.comparison is not None:
            console.print(_metric_table(g, result.primary_metric))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")


def _metric_table(group: Group, primary: str) -> Table:
    """Both candidates per metric with their CIs, and the shadow minus production, as
    ``tunewise compare`` reports a pair."""
    comp = group.comparison
    assert comp is not None
    meta = comp.meta
    table = Table(
        title=f"{escape(group.shadow)} (shadow) vs {escape(group.production)} (production) on "
        f"{group.labelled} labelled request(s), 95% {meta.get('ci_method')} bootstrap CI"
    )
    for col in ("metric", "production", "shadow", "diff", "95% CI", "p", "test", "MDD"):
        table.add_column(col, justify="left" if col in ("metric", "test") else "right")
    pairs = sorted(comp.pairs, key=lambda p: (p.metric != primary, p.metric))
    for p in pairs:
        prod, shad = comp.metrics["production"][p.metric], comp.metrics["shadow"][p.metric]
        table.add_row(
            p.metric + (" *" if p.metric == primary else ""),
            f"{cell(prod.value)} [{cell(prod.ci_low)}, {cell(prod.ci_high)}]",
            f"{cell(shad.value)} [{cell(shad.ci_low)}, {cell(shad.ci_high)}]",
            signed_cell(p.diff),
            f"{signed_cell(p.ci_low)}..{signed_cell(p.ci_high)}",
            p_cell(p.p_value),
            p.test,
            cell(p.min_detectable_diff) + (" [yellow]![/]" if p.underpowered else ""),
        )
    return table


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the top-level app."""
    app.command("compare-traffic")(compare_traffic_cmd)
