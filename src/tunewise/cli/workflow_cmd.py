"""``tunewise run``, ``tunewise advise`` and ``tunewise init``: the ladder as a product."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from tunewise import config  # a module: tests replace config.load_project
from tunewise.errors import UserError
from tunewise.eval.results import BaselineReason, Comparison, EvalRun, MetricEstimate, Verdict
from tunewise.progress import make_console

console = make_console()


def run_cmd(
    project: Path = typer.Argument(..., help="project.yaml (or its folder)"),
    methods: str = typer.Option(
        None, "--methods", help="comma-separated methods to try, e.g. lora,qlora,full"
    ),
    final: bool = typer.Option(False, "--final", help="also run the one sealed test evaluation"),
    learning_curve: bool = typer.Option(
        False,
        "--learning-curve",
        help=(
            "also train on 25% and 50% of train and evaluate each: would more data help? "
            "(~75% more training time)"
        ),
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="override a config value, e.g. train.epochs=1"
    ),
    seeds: int = typer.Option(
        1,
        "--seeds",
        help="train each fine-tune with N seeds (N times the training and fine-tune evaluation "
        "time); the gate needs the pooled seeds and the worst seed to clear every baseline",
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="print the stages, which are cached and what each will cost on this machine; "
        "run and write nothing",
    ),
) -> None:
    """Run the whole ladder: check, split, baselines, train, evaluate, compare, gate, registry,
    report."""
    from tunewise.ladder.workflow import run_ladder  # lazy: scipy, numpy; keeps --help fast

    cfg = config.load_project(project, set_)
    method_list = [m.strip() for m in methods.split(",")] if methods else None
    result = run_ladder(
        cfg,
        methods=method_list,
        final=final,
        learning_curve=learning_curve,
        console=console,
        seeds=seeds,
        dry_run=dry_run,
    )
    if result.eval_dir is not None and not dry_run:
        show_summary(result.eval_dir, test_dir=result.test_dir)


def show_summary(eval_dir: Path, test_dir: Path | None = None) -> None:
    """The comparison table, the verdict and the advice, read back from the eval directory; with
    ``test_dir`` (after ``--final``), the sealed test split's table and verdict beside them."""
    comp_path = eval_dir / "comparison.json"
    if not comp_path.is_file():
        return
    comp = Comparison.load(comp_path)
    console.print(_metrics_table(comp, f"validation results (primary: {comp.primary_metric}"))
    show_example(eval_dir)
    _show_verdict(eval_dir, "")
    show_release(eval_dir)
    if test_dir is not None and (test_dir / "comparison.json").is_file():
        _show_sealed(test_dir, comp)
    from tunewise.decide.advise import facts_from_dir, recommend  # lazy: keeps --help fast

    advice = recommend(facts_from_dir(eval_dir))
    console.print(
        Panel(
            # Advice quotes config (``train.variants: [none, fewshot]``): text, not rich markup.
            escape(
                "\n".join(
                    [advice.headline, *advice.reasons]
                    + ([advice.more_data] if advice.more_data else [])
                )
            ),
            title="advice (from validation)" if test_dir is not None else "advice",
            border_style="cyan",
        )
    )
    for name in ("report.html", "report.md"):
        if (eval_dir / name).is_file():
            console.print(f"report: {eval_dir / name}")


def _metrics_table(comp: Comparison, title: str, beside: Comparison | None = None) -> Table:
    """One row per candidate, one column per metric: value [95% CI]; with ``beside`` (the
    validation comparison), its primary metric in a first column, for reading the two together."""
    pm = comp.primary_metric
    metric_names: list[str] = []
    for per in comp.metrics.values():
        metric_names += [name for name in per if name not in metric_names]
    metric_names.sort(key=lambda n: (n != pm, n))
    table = Table(title=f"{title}, 95% CI)")
    table.add_column("candidate")
    if beside is not None:
        table.add_column(f"{pm} on validation", justify="right", style="dim")
    for name in metric_names:
        shown = f"{name} on test" if beside is not None and name == pm else name
        table.add_column(shown, justify="right")
    for cand, per in comp.metrics.items():
        cells = [_cell(per.get(name)) for name in metric_names]
        if beside is not None:
            cells.insert(0, _cell(beside.metrics.get(cand, {}).get(pm)))
        table.add_row(cand, *cells)
    return table


def _cell(e: MetricEstimate | None) -> str:
    return "-" if e is None else f"{e.value:.3f} [{e.ci_low:.2f}, {e.ci_high:.2f}]"


def gate_line(r: BaselineReason) -> str:
    """One line of the verdict: the reason names its baseline already ("beats prompt: ..."); only
    a reason that does not gets the baseline's name in front."""
    mark = "✓" if r.passed else "✗"
    named = re.search(rf"(?<![\w+-]){re.escape(r.baseline)}(?![\w+-])", r.reason)
    return f"{mark} {r.reason}" if named else f"{mark} {r.baseline}: {r.reason}"


def _show_verdict(eval_dir: Path, where: str) -> None:
    verdict_path = eval_dir / "verdict.json"
    if not verdict_path.is_file():
        return
    v = Verdict.load(verdict_path)
    lines = [escape(gate_line(r)) for r in v.reasons]
    lines += [f"✗ guard: {escape(g)}" for g in v.guard_failures]
    style = "green" if v.ship else "red"
    title = f"SHIP {v.candidate}" if v.ship else f"DON'T SHIP {v.candidate}"
    console.print(
        Panel("\n".join(lines) or escape(v.summary), title=where + title, border_style=style)
    )


def show_release(eval_dir: Path) -> None:
    """The release rule's decision, and the version it put in production with the commands that
    serve it and ask it (the ladder's registry stage wrote registry.json beside eval/)."""
    decision_path = eval_dir / "release-decision.json"
    record_path = eval_dir.parent / "registry.json"
    if not decision_path.is_file():
        return
    decision = json.loads(decision_path.read_text(encoding="utf-8"))
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    winner, promoted = decision.get("winner"), record.get("promoted")
    lines = [escape(r) for r in decision.get("reasons", [])]
    if decision.get("left_out"):
        lines.append(escape(f"not releasable, left out: {', '.join(decision['left_out'])}"))
    released = bool(winner and promoted and record.get("release", winner) == winner)
    if released:
        lines += ["", f"[bold]{escape(promoted)}[/] is in production. Serve it and ask it:"]
        title, style = f"RELEASE {winner} → {promoted} (production)", "green"
    else:
        title, style = "NOTHING RELEASED", "yellow"
    console.print(Panel("\n".join(lines), title=title, border_style=style))
    if released:
        # outside the panel, unwrapped: lines to copy into a terminal
        for command in serve_commands(promoted.split(":")[0], _first_question(eval_dir)):
            console.print(command, markup=False, highlight=False, soft_wrap=True)


def serve_commands(name: str, question: str) -> list[str]:
    """The one command that serves ``name@production`` and one request that asks it."""
    body = json.dumps(
        {"model": f"{name}@production", "messages": [{"role": "user", "content": question}]}
    )
    return [
        "tunewise serve --port 8000",
        "curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' "
        f"-d {shlex.quote(body)}",
    ]


def _first_question(eval_dir: Path) -> str:
    """The first validation item's last user turn, as a realistic request (a placeholder when
    the split is gone)."""
    from tunewise.data.schema import load_examples  # lazy: only when a release is shown

    val = eval_dir.parent / "splits" / "val.jsonl"
    try:
        return load_examples(val)[0].user_text
    except (UserError, IndexError, OSError):
        return "Hello"


def _show_sealed(test_dir: Path, val: Comparison) -> None:
    """The sealed test split's table (validation's primary metric beside it) and verdict, marked
    as the one use it is."""
    from tunewise.eval.report_sealed import ONE_USE  # lazy: numpy; keeps --help fast

    comp = Comparison.load(test_dir / "comparison.json")
    run = EvalRun.load(test_dir / "eval.json")
    use = run.meta.get("final_use")
    title = f"SEALED TEST results ({len(run.item_ids)} items{f', use #{use}' if use else ''}"
    console.print(_metrics_table(comp, f"{title}; primary: {comp.primary_metric}", beside=val))
    _show_verdict(test_dir, "sealed test: ")
    console.print(f"[yellow]⚠ {ONE_USE}[/]")
    if run.meta.get("warning"):
        console.print(f"[bold red]⚠ {run.meta['warning']}[/]")


def show_example(eval_dir: Path) -> None:
    """Every candidate's answer to one validation item: what the numbers above are made of."""
    from tunewise.eval.report import split_lookup  # lazy: numpy; keeps --help fast

    eval_path = eval_dir / "eval.json"
    if not eval_path.is_file():
        return
    run = EvalRun.load(eval_path)
    lookup = split_lookup(run)
    if not run.item_ids or run.item_ids[0] not in lookup:
        return
    item_id = run.item_ids[0]
    question, reference = lookup[item_id]
    table = Table(title="one validation item, every candidate's answer", show_lines=True)
    table.add_column("candidate")
    table.add_column("answer")
    table.add_column("correct", justify="center")
    table.add_row("[dim]reference[/]", reference, "")
    for cand in run.candidates:
        item = next((i for i in cand.items if i.item_id == item_id), None)
        if item is not None:
            ok = item.scores.get(run.primary_metric)
            mark = "" if ok is None else ("[green]✓[/]" if ok >= 1 else "[red]✗[/]")
            table.add_row(cand.name, item.output.strip()[:200] or "(empty)", mark)
    # titled by the project, whatever its data is (not "ticket", the demo's word)
    title = f"{run.project}: {run.split} item {item_id}"
    console.print(Panel(escape(question.strip()[:600]), title=escape(title), title_align="left"))
    console.print(table)


def advise_cmd(
    target: Path = typer.Argument(..., help="project.yaml, its folder, or an eval directory"),
    requests_per_day: float = typer.Option(
        None, help="expected requests per day (for the cost comparison)"
    ),
    tokens_per_request: float = typer.Option(None, help="prompt + completion tokens per request"),
    api_price: float = typer.Option(None, help="frontier API price, USD per million tokens"),
    gpu_price: float = typer.Option(
        None, help="GPU price for serving the small model, USD per hour"
    ),
    gpu_hours: float = typer.Option(24.0, help="GPU hours per day"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """A plain-language recommendation tied to the measured numbers (and the cost break-even)."""
    # lazy: keeps --help fast
    from tunewise.decide.advise import facts_from_dir, recommend
    from tunewise.decide.costs import CostInputs

    eval_dir = _eval_dir_of(target)
    cost = None
    given = [requests_per_day, tokens_per_request, api_price, gpu_price]
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise UserError(
                "cost: give all of --requests-per-day, --tokens-per-request, --api-price, "
                "--gpu-price"
            )
        cost = CostInputs(requests_per_day, tokens_per_request, api_price, gpu_price, gpu_hours)
    advice = recommend(facts_from_dir(eval_dir), cost=cost)
    if as_json:
        typer.echo(json.dumps(advice.to_json(), indent=2))
        return
    body = [f"[bold]{escape(advice.headline)}[/]", *[f"• {escape(r)}" for r in advice.reasons]]
    if advice.more_data:
        body.append(f"• {escape(advice.more_data)}")
    if advice.cost:
        c = advice.cost
        body.append(
            f"• Cost: frontier API ${c.api_cost_per_day:,.2f}/day vs self-hosted "
            f"${c.gpu_cost_per_day:,.2f}/day; break-even at "
            f"{c.break_even_requests_per_day:,.0f} requests/day "
            f"({c.cheaper} is cheaper at your volume)."
        )
    console.print(Panel("\n".join(body), title="tunewise advise", border_style="cyan"))


def _eval_dir_of(target: Path) -> Path:
    if (target / "comparison.json").is_file():
        return target
    cfg = config.load_project(target)
    return cfg.work_dir / "eval"


def init_cmd(
    data: Path = typer.Argument(..., help="chat JSONL with your examples"),
    out: Path = typer.Option(
        None, "--out", help="project folder to create (default: beside the data)"
    ),
    name: str = typer.Option(None, "--name", help="project name (default: the data file's stem)"),
    docs: Path = typer.Option(None, "--docs", help="folder of documents for the RAG rung"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing project.yaml"),
) -> None:
    """Scaffold a project.yaml from your data: infers the task type, graders and primary metric."""
    from tunewise.ladder.init import init_project  # lazy: keeps --help fast

    path, summary = init_project(data, out=out, name=name, docs=docs, force=force)
    console.print(f"[green]wrote[/] {path}")
    for line in summary:
        console.print(f"  • {line}")
    console.print(f"next: edit it, then `tunewise run {path}`")


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
    app.command("init")(init_cmd)
    app.command("advise")(advise_cmd)
