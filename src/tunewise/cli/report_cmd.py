"""``tunewise compare | gate | report | rate``: statistics, the ship gate, reports, ratings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from tunewise.config import GateConfig, load_project
from tunewise.errors import UserError
from tunewise.eval.results import (
    COMPARISON_FILE,
    EVAL_FILE,
    VERDICT_FILE,
    EvalRun,
    gate_config_from_meta,
)
from tunewise.fsio import atomic_write_json
from tunewise.numbers import cell
from tunewise.progress import make_console

if TYPE_CHECKING:
    from tunewise.eval.results import Comparison

console = make_console()

_EVAL_DIR = typer.Argument(..., help="evaluation directory (holds eval.json)", file_okay=False)
_PROJECT = typer.Option(None, "--project", "-p", help="project.yaml whose gate section to use")
_BASELINES = typer.Option(
    None, "--baseline", "-b", help="baseline name (repeatable); default: gate.baselines"
)


def _load_run(eval_dir: Path) -> EvalRun:
    return EvalRun.load(eval_dir / EVAL_FILE)


def _gate_cfg(
    run: EvalRun,
    project: Path | None,
    alpha: float | None,
    delta: float | None,
    baselines: list[str] | None,
) -> GateConfig:
    cfg = load_project(project).gate if project else gate_config_from_meta(run.meta)
    updates = {
        k: v
        for k, v in {"alpha": alpha, "delta": delta, "baselines": baselines}.items()
        if v is not None and v != []
    }
    if updates:
        try:
            cfg = GateConfig.model_validate({**cfg.model_dump(), **updates})
        except ValueError as exc:
            raise UserError(f"invalid gate option: {exc}") from None
    return cfg


def compare_cmd(
    eval_dir: Path = _EVAL_DIR,
    baselines: list[str] | None = _BASELINES,
    alpha: float | None = typer.Option(None, help="significance level (default: gate.alpha)"),
    n_boot: int = typer.Option(2000, "--n-boot", help="bootstrap resamples"),
    seed: int = typer.Option(0, help="bootstrap seed"),
    ci: str = typer.Option("bca", help="bootstrap interval: bca or percentile"),
    project: Path | None = _PROJECT,
) -> None:
    """CIs for every metric and paired tests against every baseline; writes comparison.json."""
    from tunewise.decide import comparison  # lazy: scipy; keeps --help fast

    if ci not in ("bca", "percentile"):
        raise UserError(f"--ci must be bca or percentile, got {ci!r}")
    run = _load_run(eval_dir)
    cfg = _gate_cfg(run, project, alpha, None, baselines)
    with console.status(f"bootstrapping {len(run.item_ids)} items x {n_boot} resamples ..."):
        comp = comparison.build(
            run,
            eval_dir,
            cfg,
            gated=[c.name for c in run.candidates if c.name not in cfg.baselines],
            baselines=cfg.baselines if baselines else None,
            n_boot=n_boot,
            seed=seed,
            ci_method=ci,  # type: ignore[arg-type]
        )
    _print_comparison(comp)
    console.print(f"wrote {eval_dir / COMPARISON_FILE}")


def _print_comparison(comp: Comparison) -> None:
    metrics = sorted(
        {m for per in comp.metrics.values() for m in per},
        key=lambda m: (m != comp.primary_metric, m),
    )
    table = Table(
        title=f"{comp.meta.get('n_items')} items, 95% {comp.meta.get('ci_method')} bootstrap CI"
    )
    table.add_column("candidate")
    for m in metrics:
        table.add_column(m + (" *" if m == comp.primary_metric else ""), justify="right")
    for name, per in comp.metrics.items():
        cells = [
            f"{cell(e.value)} [{cell(e.ci_low)}, {cell(e.ci_high)}]" if (e := per.get(m)) else "–"
            for m in metrics
        ]
        table.add_row(escape(name), *cells)
    console.print(table)
    pt = Table(title=f"paired tests on {comp.primary_metric}")
    for col in ("candidate", "baseline", "diff", "95% CI", "p", "test", "n", "MDD"):
        pt.add_column(col, justify="left" if col in ("candidate", "baseline", "test") else "right")
    for p in comp.pairs:
        if p.metric != comp.primary_metric:
            continue
        flag = (
            " [yellow]![/]"
            if p.underpowered and not p.p_value < comp.meta.get("alpha", 0.05)
            else ""
        )
        pt.add_row(
            escape(p.candidate),
            escape(p.baseline),
            f"{p.diff:+.3f}",
            f"{p.ci_low:+.3f}..{p.ci_high:+.3f}",
            f"{p.p_value:.3g}",
            p.test,
            str(p.n),
            cell(p.min_detectable_diff) + flag,
        )
    if pt.row_count:
        console.print(pt)
    for b in comp.meta.get("missing_baselines", []):
        console.print(f"[yellow]baseline {escape(b)} was not evaluated[/]")


def gate_cmd(
    eval_dir: Path = _EVAL_DIR,
    candidate: str = typer.Option(
        ..., "--candidate", "-c", help="the candidate to gate, e.g. finetuned"
    ),
    alpha: float | None = typer.Option(None, help="significance level (default: gate.alpha)"),
    delta: float | None = typer.Option(
        None, help="minimum margin on the primary metric (default: gate.delta)"
    ),
    baselines: list[str] | None = _BASELINES,
    project: Path | None = _PROJECT,
) -> None:
    """Ship or not: exit 0 = ship, 1 = don't ship, 2 = error. Writes verdict.json."""
    # lazy: scipy and the harness; keeps --help fast
    from tunewise.decide import comparison
    from tunewise.decide.champion import ensure_champion
    from tunewise.decide.gate import decide, save_verdict

    run = _load_run(eval_dir)
    cfg = _gate_cfg(run, project, alpha, delta, baselines)
    # champion/challenger: the production version on the same items (evaluated here if need be)
    run, champion, note = ensure_champion(run, eval_dir, candidate, project)
    if note:
        console.print(f"[yellow]{escape(note)}[/]")
    # A comparison made from another evaluation or with other baselines lacks the pairs this gate
    # needs: build it again (about 1 s); the margin tests follow the candidate gated now.
    comp = comparison.load_current(run, eval_dir, cfg)
    if comp is None:
        comp = comparison.build(run, eval_dir, cfg, gated=[candidate], champion=champion)
    else:
        comp = comparison.refresh_margin_tests(comp, run, eval_dir, cfg, [candidate], champion)
    verdict = decide(comp, candidate, cfg)
    save_verdict(verdict, eval_dir / VERDICT_FILE, cfg)
    lines = [
        f"[{'green' if r.passed else 'red'}]{'✔' if r.passed else '✘'}[/] {escape(r.reason)}"
        for r in verdict.reasons
    ]
    lines += [f"[red]✘[/] guard {escape(g)}" for g in verdict.guard_failures]
    color = "green" if verdict.ship else "red"
    word = "SHIP" if verdict.ship else "DON'T SHIP"
    body = "\n".join([f"[bold]{escape(verdict.summary)}[/]", "", *lines])
    console.print(
        Panel(body, title=f"[bold {color}]{word}[/]", border_style=color, title_align="left")
    )
    raise typer.Exit(0 if verdict.ship else 1)


def report_cmd(
    eval_dir: Path = _EVAL_DIR,
    train_runs: list[Path] | None = typer.Option(
        None, "--train-run", help="training run dir with run.json (repeatable)"
    ),
    test_dir: Path | None = typer.Option(
        None,
        "--test",
        help="the sealed test evaluation (e.g. .tunewise/eval-test), shown in its own section",
        file_okay=False,
    ),
) -> None:
    """Write report.html (self-contained) and report.md into EVAL_DIR."""
    from tunewise.decide.report_inputs import render_report  # lazy: scipy; keeps --help fast

    if test_dir is not None and not (test_dir / EVAL_FILE).is_file():
        raise UserError(f"--test {test_dir}: no {EVAL_FILE} there (run `tunewise run --final`)")
    with console.status("rendering report ..."):
        html, md = render_report(eval_dir, train_runs or [], test_dir)
    console.print(f"wrote {html}\nwrote {md}")


_RATE_DIR = typer.Argument(
    None, help="evaluation directory (holds eval.json); not with --label", file_okay=False
)
_LABEL = typer.Option(
    None,
    "--label",
    help="label drafts (from `data from-traffic`) one by one in the terminal: accept, correct, "
    "reject; resumable",
    dir_okay=False,
)
_LABEL_OUT = typer.Option(None, "--out", help="--label: JSONL of the labelled examples")


def rate_cmd(
    eval_dir: Path | None = _RATE_DIR,
    a: str | None = typer.Option(None, "--a", help="first candidate"),
    b: str | None = typer.Option(None, "--b", help="second candidate"),
    port: int = typer.Option(8765, help="port on 127.0.0.1"),
    rater: str = typer.Option("local", help="rater name (one rating per item per rater)"),
    seed: int = typer.Option(0, help="seed for item order and left/right placement"),
    label: Path | None = _LABEL,
    out: Path | None = _LABEL_OUT,
) -> None:
    """Rate two candidates side by side in the browser (blinded, random order; keys 1/2/0/s),
    or, with --label DRAFTS --out FILE, label drafts in the terminal (accept, correct, reject)."""
    if label is not None:
        if out is None:
            raise UserError("--label needs --out FILE (where the labelled examples go)")
        if eval_dir is not None or a is not None or b is not None:
            raise UserError("--label labels drafts: give no EVAL_DIR, --a or --b with it")
        _label_drafts(label, out)
        return
    if eval_dir is None or a is None or b is None:
        raise UserError("rate needs EVAL_DIR, --a and --b (or --label DRAFTS --out FILE)")
    from tunewise.eval import human  # lazy: scipy; keeps --help fast

    session = human.open_session(eval_dir, a, b, seed=seed, rater=rater)
    p = session.progress()
    console.print(
        f"rating {escape(a)} vs {escape(b)}: {p['rated']}/{p['total']} done; ratings in "
        f"{session.store.path}"
    )
    console.print(f"open [bold]http://127.0.0.1:{port}/[/]  (Ctrl-C to stop)")
    import uvicorn  # lazy: uvicorn, only a running rating page needs it

    uvicorn.run(human.create_app(session), host="127.0.0.1", port=port, log_level="warning")
    s = session.summary()
    if s["n"]:
        console.print(
            f"{escape(a)} win rate {s['win_rate_a']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] "
            f"over {s['n']} ratings"
        )


_KEYS = {"a": "accept", "c": "correct", "e": "correct", "r": "reject", "s": "skip", "q": "quit"}


def _label_drafts(drafts: Path, out: Path) -> None:
    """The terminal shell of :func:`tunewise.data.labelling.label_drafts`."""
    from tunewise.data import labelling  # lazy: the data layer's JSON checks; keeps --help fast

    session = labelling.Labelling(drafts, out)
    todo = session.pending()
    console.print(
        f"{len(todo)} draft(s) to label, {len(session.done())} decided before; labelled "
        f"examples go to {escape(str(out))}",
        soft_wrap=True,
    )
    total, position = len(todo), {d.key: i for i, d in enumerate(todo, start=1)}

    def ask(draft: labelling.Draft, problem: str | None) -> labelling.Decision:
        if problem is not None:
            console.print(f"[red]not a valid example[/]: {escape(problem)}; try again")
        else:
            n = position.get(draft.key, 0)
            body = f"{escape(labelling.show_turns(draft.prompt))}\n\n[bold]draft[/]: "
            body += escape(draft.answer)
            why = f" ({escape(draft.why)})" if draft.why else ""
            console.print(Panel(body, title=f"{n}/{total} {escape(draft.key)}{why}"))
        key = (
            typer.prompt(
                "[a]ccept [c]orrect (one line, \\n for a new line) [e]dit [r]eject [s]kip [q]uit",
                default="a",
            )
            .strip()[:1]
            .lower()
        )
        action = _KEYS.get(key, "skip")
        if key == "c":
            answer = typer.prompt("answer").replace("\\n", "\n")
            return labelling.Decision("correct", answer)
        if key == "e":
            edited = typer.edit(draft.answer)
            return labelling.Decision("correct", edited) if edited else labelling.Decision("skip")
        return labelling.Decision(action)  # type: ignore[arg-type]

    counts = labelling.label_drafts(session, ask)
    left = len(session.pending())
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no decision"
    console.print(f"{summary}; {left} draft(s) left; {len(session.rows)} labelled in {out}")


def calibrate_cmd(
    eval_dir: Path = _EVAL_DIR,
    project: Path = typer.Option(..., "--project", "-p", help="project.yaml (names the judge)"),
) -> None:
    """Check the LLM judge against people: for every pair rated with `tunewise rate`, Cohen's
    kappa (bootstrap CI) and raw agreement, and the share of pairwise verdicts that flip when the
    two answers swap places. Writes judge_calibration.json; the report shows it."""
    from tunewise.eval import calibration, human  # lazy: scipy; keeps --help fast

    run = _load_run(eval_dir)
    db = human.ratings_db(eval_dir)
    if not db.is_file():
        raise UserError(f"{eval_dir}: no human ratings yet (run `tunewise rate {eval_dir}` first)")
    backend, name = calibration.judge_backend(load_project(project))
    result = calibration.run_calibration(run, db, backend, judge_name=name, progress=True)
    atomic_write_json(eval_dir / calibration.CALIBRATION_FILE, result)
    for p in result["pairs"]:
        bias, rubric = p["position_bias"], p["rubric_agreement"] or {}
        kappa = rubric.get("kappa", p["pairwise_agreement"]["kappa"])
        console.print(
            f"{escape(p['a'])} vs {escape(p['b'])}: kappa {kappa:.2f}, verdicts that flip when "
            f"swapped {bias['flip_share']:.0%} of {bias['n']}"
        )
    console.print(f"wrote {eval_dir / calibration.CALIBRATION_FILE}")


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the top-level app."""
    app.command("compare")(compare_cmd)
    app.command("gate")(gate_cmd)
    app.command("report")(report_cmd)
    app.command("rate")(rate_cmd)
    app.command("calibrate")(calibrate_cmd)
