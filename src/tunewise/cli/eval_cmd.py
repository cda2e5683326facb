"""``tunewise eval``: every candidate on the same items, then a candidates x metrics table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from tunewise.config import load_project
from tunewise.errors import UserError
from tunewise.eval.results import EVAL_FILE
from tunewise.progress import make_console

if TYPE_CHECKING:
    from tunewise.eval.results import EvalRun

console = make_console()


def _parse_runs(values: list[str]) -> dict[str, Path]:
    """``RUN`` or ``NAME=RUN``; one run is "finetuned", several are "finetuned-<dir name>"."""
    runs: dict[str, Path] = {}
    for v in values:
        name, _, path = v.rpartition("=") if "=" in v else ("", "", v)
        p = Path(path)
        if not p.exists():
            raise UserError(f"--finetuned {v}: no such run directory")
        runs[name or ("finetuned" if len(values) == 1 else f"finetuned-{p.name}")] = p
    return runs


def render_table(run: EvalRun) -> Table:
    """Candidates x metrics: mean per metric, NaN-aware (unparseable judge replies counted)."""
    metrics = list(dict.fromkeys(m for c in run.candidates for m in c.metrics()))
    order = ["accuracy", "format_compliance", "exact_match", "json_valid", "schema_valid", "judge"]
    metrics.sort(key=lambda m: (order.index(m) if m in order else len(order), m))
    table = Table(
        title=f"{run.project}: {run.split} split, {len(run.item_ids)} items "
        f"(primary metric: {run.primary_metric})"
    )
    table.add_column("candidate", style="bold")
    table.add_column("kind")
    for m in metrics:
        table.add_column(m, justify="right")
    table.add_column("s", justify="right")
    for c in run.candidates:
        cells = []
        for m in metrics:
            mean, unparsed = c.mean(m)
            if mean is None:
                cells.append("-")
            else:
                cells.append(f"{mean:.3f}" + (f" ({unparsed} NaN)" if unparsed else ""))
        table.add_row(c.name, c.kind, *cells, f"{c.meta.get('seconds', 0):.1f}")
    return table


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the top-level app."""

    @app.command("eval")
    def eval_cmd(
        project: Annotated[Path, typer.Argument(help="project.yaml (or its folder)")],
        candidates: Annotated[
            str | None,
            typer.Option(
                help="comma-separated: prompt,fewshot,rag,knn,finetuned,finetuned+rag,"
                "external names, X+constrained (default: eval.candidates)"
            ),
        ] = None,
        finetuned: Annotated[
            list[str] | None,
            typer.Option(
                "--finetuned",
                help="training run directory (LoRA/QLoRA adapter or full checkpoint), "
                "optionally NAME=DIR; repeatable",
            ),
        ] = None,
        split: Annotated[str, typer.Option(help="val, or test (sealed: needs --final)")] = "val",
        final: Annotated[
            bool, typer.Option("--final", help="allow the sealed test split; each use is recorded")
        ] = False,
        limit: Annotated[int | None, typer.Option(help="evaluate the first N items only")] = None,
        out: Annotated[
            Path | None,
            typer.Option(
                help="output folder for eval.json (default .tunewise/eval or .tunewise/eval-test)"
            ),
        ] = None,
        set_: Annotated[
            list[str] | None, typer.Option("--set", help="override a config value: eval.rag.k=5")
        ] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
    ) -> None:
        """Evaluate every candidate on the same items and print a candidates x metrics table.

        Baselines (prompt, few-shot, RAG), the kNN reference, fine-tuned runs, external
        endpoints and constrained label mode all answer the same items; generations are cached,
        so a rerun is free. Follow with `tunewise report` for confidence intervals, paired tests
        and the gate.
        """
        # lazy: the harness pulls numpy and the baselines; keeps --help fast
        from tunewise.eval.harness import default_out_dir, evaluate

        cfg = load_project(project, set_)
        names = [c.strip() for c in candidates.split(",") if c.strip()] if candidates else None
        runs = _parse_runs(finetuned or [])
        run = evaluate(
            cfg,
            split=split,
            candidates=names,
            finetuned=runs,
            final=final,
            out_dir=out,
            progress=not quiet,
            limit=limit,
        )
        console.print(render_table(run))
        for note in run.meta.get("notes", []):
            console.print(f"[yellow]note:[/] {note}")
        if run.meta.get("warning"):
            console.print(f"[bold red]{run.meta['warning']}[/]")
        where = out if out is not None else default_out_dir(cfg, split)
        console.print(f"saved {where / EVAL_FILE}")
