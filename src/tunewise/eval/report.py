"""The evaluation report: one self-contained HTML file and a Markdown summary.

The HTML has no external references (figures are base64 PNGs drawn with matplotlib's Agg
backend, CSS is inline), so it can be mailed, attached to a ticket or opened offline. Every piece
of user text (prompts, outputs, labels, candidate names) is escaped by Jinja2's autoescape in
HTML and by :func:`md_escape` in Markdown: model outputs are untrusted input.

Inputs (:class:`~tunewise.eval.report_tables.ReportInputs`, gathered by
:mod:`tunewise.decide.report_inputs`): ``eval.json``, ``comparison.json``, the saved verdicts (or,
where none was saved for this evaluation, the gate's provisional ones, marked so): the report reads
verdicts and never decides. From ``EVAL_DIR`` it also reads ``ratings.sqlite`` (human side-by-side
ratings, optional), and each training run's ``run.json`` for loss curves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from tunewise.errors import UserError
from tunewise.eval import calibration, figures, tool_graders
from tunewise.eval.flips import champion_views
from tunewise.eval.items import item_prompt, item_reference
from tunewise.eval.items import split_lookup as split_lookup  # re-exported for the CLI
from tunewise.eval.judge_reference import summary_line
from tunewise.eval.learning_curve import CURVE_FILE, load_curve
from tunewise.eval.report_sealed import eval_time, md_sealed, sealed_context
from tunewise.eval.report_tables import (
    ReportInputs,
    interval,
    md_escape,
    md_table,
    metric_rows,
    pair_rows,
    shown_order,
    significant,
    value_of,
)
from tunewise.eval.results import (
    WHERE_APPLICABLE,
    Comparison,
    EvalRun,
    ItemResult,
    Verdict,
)
from tunewise.fsio import atomic_write_text
from tunewise.numbers import cell, p_cell, signed_cell
from tunewise.rundir import RunDir

WORST_K = 5
TOOL_ARGS_NOTE = (
    "Call arguments over all items, (function, argument, value) triples: micro precision, "
    "recall and F1; slot F1 per function argument, weighted by its share of the references' "
    "arguments (the 2017 NLU benchmark's way)"
)
_TRUNC = 600


# ----------------------------------------------------------------------------- helpers
@dataclass
class TrainRunInfo:
    name: str
    method: str
    status: str
    stop_reason: str
    best_val_loss: float | None
    steps: int


def _status_text(rd: RunDir) -> str:
    """The run's status; an interrupted run says how to continue it."""
    status = rd.effective_status() or "?"
    if status == "interrupted":
        return f"interrupted (resume: {rd.resume_command()})"
    return status


def _load_train_run(path: Path) -> tuple[TrainRunInfo, list[dict[str, Any]]]:
    """A training run's summary and logged rows (``path``: the run directory or its run.json)."""
    rd = RunDir(path if path.is_dir() else path.parent)
    given = rd.run_json if path.is_dir() else path
    raw = rd.read() if given == rd.run_json else None
    if raw is None:
        raise UserError(f"{given}: not found (expected a training run directory with run.json)")
    rows = [r for r in raw.get("metrics", []) if isinstance(r, dict) and "step" in r]
    info = TrainRunInfo(
        name=rd.path.name,
        method=str(raw.get("method", "?")),
        status=_status_text(rd),
        stop_reason=str(raw.get("stop_reason") or ""),
        best_val_loss=raw.get("best_val_loss"),
        steps=max((int(r["step"]) for r in rows), default=0),
    )
    return info, rows


def _load_curve(eval_dir: Path) -> list[tuple[int, float]]:
    path = eval_dir / CURVE_FILE
    if not path.is_file():
        return []
    try:
        return load_curve(path)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a valid learning curve: {exc}") from None


# ----------------------------------------------------------------------------- content
def _worst(run: EvalRun, name: str, primary: str, k: int = WORST_K) -> list[dict[str, Any]]:
    """Lowest primary score first; among equals, items the other candidates got right first."""
    others = [c for c in run.candidates if c.name != name]
    by_id = {c.name: {it.item_id: it for it in c.items} for c in others}

    def score(it: ItemResult, key: str) -> float:
        v = it.scores.get(key)
        return math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    def key(it: ItemResult) -> tuple[float, float, float]:
        others_ok = sum(
            score(by_id[c][it.item_id], primary)
            for c in by_id
            if it.item_id in by_id[c]
            if math.isfinite(score(by_id[c][it.item_id], primary))
        )
        return (score(it, primary), -others_ok, score(it, "judge"))

    items = sorted(run.candidate(name).items, key=key)[:k]
    out = []
    for it in items:
        v = it.scores.get(primary)
        if v is not None and not (isinstance(v, float) and math.isnan(v)) and v >= 1.0:
            break  # nothing left that went wrong
        prompt = item_prompt(it, run)
        out.append(
            {
                "item_id": it.item_id,
                "prompt": prompt[:_TRUNC] + ("…" if len(prompt) > _TRUNC else ""),
                "output": it.output[:_TRUNC] + ("…" if len(it.output) > _TRUNC else ""),
                "reference": item_reference(it, run)[:_TRUNC],
                "gold": it.gold,
                "predicted": it.predicted,
                "scores": ", ".join(
                    f"{m}={cell(s, 2)}" for m, s in sorted(it.scores.items()) if s is not None
                ),
            }
        )
    return out


def _load_ratings(eval_dir: Path, run: EvalRun) -> list[dict[str, Any]]:
    """Human ratings per pair, with the judge's agreement with them where it was measured."""
    from tunewise.eval import human  # lazy: the rating app pulls scipy

    db = eval_dir / human.DB_NAME
    if not db.is_file():
        return []
    out = [s for s in human.summaries(db) if s["n"] > 0]
    found = {(x["a"], x["b"]): x for x in calibration.agreement_from_eval(run, db)}
    bias = _position_bias(eval_dir / calibration.CALIBRATION_FILE)
    for s in out:
        k = found.get((s["a"], s["b"]))
        s["judge"] = (
            f"kappa {cell(k['kappa'], 2)} [{interval(k['ci_low'], k['ci_high'])}], "
            f"agreement {cell(k['raw_agreement'], 2)}"
            if k
            else "–"
        )
        b = bias.get((s["a"], s["b"]))
        s["flips"] = f"{cell(b['flip_share'], 2)} of {b['n']}" if b else "–"
    return out


def _position_bias(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Each calibrated pair's position bias from judge_calibration.json (none when absent); a
    damaged file is one line naming it, not a traceback."""
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return {(p["a"], p["b"]): dict(p["position_bias"]) for p in saved.get("pairs", [])}
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(
            f"{path}: unreadable judge calibration ({type(exc).__name__}: {exc}); "
            "run `tunewise calibrate` again or delete the file"
        ) from None


def build_context(
    inputs: ReportInputs, train_runs: Sequence[Path] = (), sealed: ReportInputs | None = None
) -> dict[str, Any]:
    """Everything the HTML and Markdown templates show, from one evaluation and the training
    runs; with ``sealed``, the sealed test evaluation in a section of its own."""
    eval_dir, run, comp, gate_cfg = inputs.eval_dir, inputs.run, inputs.comp, inputs.gate_cfg
    verdicts, provisional = inputs.verdicts, inputs.provisional
    baselines, names, metrics = shown_order(comp, run, gate_cfg)
    primary = comp.primary_metric
    colors = figures.colors(names, baselines)
    best = max(
        (n for n in names if math.isfinite(value_of(comp, n, primary))),
        key=lambda n: value_of(comp, n, primary),
        default=None,
    )
    pairs = pair_rows(comp)
    nan_counts = comp.meta.get("nan_counts", {})
    return {
        "title": f"tunewise report: {run.project}",
        "project": run.project,
        "split": run.split,
        "split_hash": run.split_hash[:12],
        "n_items": len(run.item_ids),
        "primary": primary,
        "names": names,
        "baselines": baselines,
        "metrics": metrics,
        "table": metric_rows(comp, names, metrics, baselines, colors),
        "pairs": pairs,
        "pairs_primary": [p for p in pairs if p["primary"]],
        "pairs_other": [p for p in pairs if not p["primary"]],
        "power_warnings": _power_warnings(comp),
        "verdicts": verdicts,
        "provisional": provisional,
        "gate": gate_cfg.model_dump(),
        "alpha": comp.meta.get("alpha", gate_cfg.alpha),
        "ci_method": comp.meta.get("ci_method", "bca"),
        "n_boot": comp.meta.get("n_boot"),
        "missing_baselines": comp.meta.get("missing_baselines", []),
        "corpus": _corpus_lines(run, names),
        "tool_args": _tool_arg_lines(run, names),
        "tool_args_note": TOOL_ARGS_NOTE,
        "judge_reference": _judge_reference(comp),
        "nan_notes": [
            f"{c}: {m} unparsed on {k} item(s)"
            for c, per in nan_counts.items()
            for m, k in per.items()
            # NaN there means "does not apply", not "unparsed"
            if m not in (*WHERE_APPLICABLE, *tool_graders.WHERE_APPLICABLE)
        ],
        "metrics_png": figures.metrics_figure(comp, names, metrics, colors) if metrics else None,
        "best": best,
        **_confusion(run, best),
        **_training(eval_dir, [Path(p) for p in train_runs], primary),
        "worst": {n: _worst(run, n, primary) for n in names},
        "ratings": _load_ratings(eval_dir, run),
        "champion": _champion(run, verdicts, primary),
        "sealed": sealed_context(sealed) if sealed is not None else None,
        "eval_time": eval_time(run),
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _judge_reference(comp: Comparison) -> list[str]:
    """The judge against the reference metric: overall, then per pair of candidates."""
    found = comp.meta.get("judge_vs_reference")
    if not found:
        return []
    lines = [summary_line(found)]
    for p in found["pairs"]:
        decided = p["agree"] + p["disagree"]
        rate = f"{100 * p['rate']:.0f}%" if p["rate"] is not None else "–"
        lines.append(f"{p['a']} vs {p['b']}: {p['agree']} of {decided} ({rate})")
    return lines


def _champion(run: EvalRun, verdicts: list[Verdict], primary: str) -> list[dict[str, Any]]:
    views = champion_views(run, verdicts, primary)
    for view in views:
        for key in ("challenger_value", "champion_value"):
            view[key] = cell(view[key])
    return views


def _power_warnings(comp: Comparison) -> list[str]:
    """Primary-metric differences seen but too small for this many items to confirm."""
    out = []
    for p in comp.pairs:
        if p.metric != comp.primary_metric or not p.underpowered or p.diff == 0:
            continue
        if significant(comp, p):
            continue
        needed = comp.items_needed(p)
        out.append(
            f"{p.candidate} vs {p.baseline}: observed {p.metric} difference {signed_cell(p.diff)} "
            f"(p={p_cell(p.p_value)}) is below what {p.n} items can detect "
            f"({cell(p.min_detectable_diff)} at 80% power)"
            + (f"; about {needed} items would be needed" if needed else "")
        )
    return out


def _confusion(run: EvalRun, best: str | None) -> dict[str, Any]:
    """The best candidate's confusion matrix, when its items carry labels."""
    if best is None or not any(it.gold is not None for it in run.candidate(best).items):
        return {"cm_png": None, "cm_note": ""}
    png, note = figures.confusion_figure(run.candidate(best).items, best)
    return {"cm_png": png, "cm_note": note}


def _training(eval_dir: Path, train_runs: list[Path], primary: str) -> dict[str, Any]:
    """Loss curves of the training runs and the learning curve, when there are any."""
    loaded = [_load_train_run(p) for p in train_runs]
    curve = _load_curve(eval_dir)
    return {
        "train_runs": [info for info, _ in loaded],
        "loss_png": figures.loss_figure([(i.name, rows) for i, rows in loaded]) if loaded else None,
        "curve": [{"n": n, "value": cell(v)} for n, v in curve],
        "curve_png": figures.curve_figure(curve, primary) if len(curve) > 1 else None,
    }


# ----------------------------------------------------------------------------- output
def render_html(ctx: dict[str, Any]) -> str:
    import jinja2  # lazy: jinja2, only the HTML report renders a template

    env = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    template = (
        resources.files("tunewise").joinpath("assets/report.html.j2").read_text(encoding="utf-8")
    )
    return env.from_string(template).render(**ctx)


def render_markdown(ctx: dict[str, Any]) -> str:
    """The report as Markdown: the same sections as the HTML, without the figures."""
    out = [f"# {md_escape(ctx['title'])}", ""]
    for section in (
        _md_verdicts,
        _md_metrics,
        md_sealed,
        _md_pairs,
        _md_ratings,
        _md_champion,
        _md_training,
        _md_curve,
        _md_worst,
    ):
        out += section(ctx)
    out.append(f"_Generated {ctx['generated']} by tunewise. The HTML report has the figures._")
    return "\n".join(out) + "\n"


def _md_verdicts(ctx: dict[str, Any]) -> list[str]:
    e = md_escape
    out = []
    for v in ctx["verdicts"]:
        mark = "✅" if v.ship else "⛔"
        out.append(
            f"**{mark} {e(v.summary)}**"
            + (" _(provisional: no verdict.json)_" if ctx["provisional"] else "")
        )
        out.append("")
        for r in v.reasons:
            out.append(f"- {'✔' if r.passed else '✘'} {e(r.reason)}")
        for g in v.guard_failures:
            out.append(f"- ✘ guard {e(g)}")
        out.append("")
    if not ctx["verdicts"]:
        out += ["No gate verdict (no candidate besides the baselines).", ""]
    out.append(
        f"Split `{e(ctx['split'])}` ({ctx['n_items']} items, hash {e(ctx['split_hash'])}); "
        f"primary metric **{e(ctx['primary'])}**; 95% {e(ctx['ci_method'])} bootstrap CIs "
        f"({ctx['n_boot']} resamples)."
    )
    out.append("")
    for w in ctx["power_warnings"]:
        out.append(f"> ⚠ {e(w)}")
    if ctx["power_warnings"]:
        out.append("")
    return out


def _corpus_lines(run: EvalRun, names: list[str]) -> list[str]:
    """Each candidate's corpus BLEU and chrF as sacrebleu reports them (free-text graders)."""
    by_name = {c.name: c for c in run.candidates}
    out = []
    for name in names:
        corpus = by_name[name].meta.get("corpus") if name in by_name else None
        if corpus:
            scores = ", ".join(f"{m} {v:.1f}" for m, v in sorted(corpus.items()))
            out.append(f"{name}: {scores}")
    return out


def _tool_arg_lines(run: EvalRun, names: list[str]) -> list[str]:
    """Each candidate's arguments over the whole set (function-call tasks): micro precision,
    recall and F1 from the items' counts, and slot F1 the 2017 NLU benchmark's way (per slot,
    weighted by the slot's share of the reference's occurrences), the figure papers quote."""
    by_name = {c.name: c for c in run.candidates}
    out = []
    for name in names:
        metas = [it.meta for it in by_name[name].items] if name in by_name else []
        micro = tool_graders.micro_scores(metas)
        if micro is None:
            continue
        slot_f1 = tool_graders.benchmark_slot_f1(metas)
        out.append(
            f"{name}: micro P {cell(micro['precision'])} R {cell(micro['recall'])} "
            f"F1 {cell(micro['f1'])}, slot F1 (benchmark) {cell(slot_f1)}"
        )
    return out


def _md_metrics(ctx: dict[str, Any]) -> list[str]:
    e = md_escape
    out = ["## Candidates × metrics", ""]
    out += md_table(
        ["candidate", *(e(m) for m in ctx["metrics"])],
        [
            [
                e(row["name"]) + (" (baseline)" if row["is_baseline"] else ""),
                *(
                    "–"
                    if c is None
                    else (f"**{c['value']}**" if c["best"] else c["value"]) + f" [{c['ci']}]"
                    for c in row["cells"]
                ),
            ]
            for row in ctx["table"]
        ],
    )
    if ctx["corpus"]:
        corpus = "; ".join(ctx["corpus"])
        out += ["", f"Corpus scores as sacrebleu reports them (0-100): {e(corpus)}."]
    if ctx["tool_args"]:
        out += ["", f"{TOOL_ARGS_NOTE}: {e('; '.join(ctx['tool_args']))}."]
    if ctx["judge_reference"]:
        first, *per_pair = ctx["judge_reference"]
        out += ["", f"{e(first)}." + (f" Per pair: {e('; '.join(per_pair))}." if per_pair else "")]
    out += ["", f"Evaluation time on {e(ctx['split'])}: {e(ctx['eval_time'])}.", ""]
    for note in ctx["nan_notes"]:
        out.append(f"- judge parse failures: {e(note)}")
    if ctx["nan_notes"]:
        out.append("")
    return out


def _md_section(title: str, header: list[str], rows: list[list[Any]], *notes: str) -> list[str]:
    """A ``## title`` section: one table (cells already escaped), then its notes."""
    out = [f"## {title}", "", *md_table(header, rows), ""]
    for note in notes:
        out += [note, ""]
    return out


def _md_pairs(ctx: dict[str, Any]) -> list[str]:
    e = md_escape
    header = ["candidate", "baseline", "metric", "cand", "base", "diff", "95% CI", "p", "test", "n"]
    rows = [
        [
            *(e(p[k]) for k in ("candidate", "baseline", "metric")),
            *(p[k] for k in ("cand", "base", "diff", "ci", "p", "test", "n")),
            f"{p['mdd']}{' ⚠' if p['underpowered'] else ''}",
        ]
        for p in ctx["pairs"]
    ]
    return _md_section(
        "Paired tests",
        [*header, "MDD"],
        rows,
        "MDD: minimum detectable difference at 80% power; ⚠ = observed difference below it.",
    )


def _md_ratings(ctx: dict[str, Any]) -> list[str]:
    if not ctx["ratings"]:
        return []
    e = md_escape
    rows = []
    for r in ctx["ratings"]:
        win, ci = cell(r["win_rate_a"]), interval(r["ci_low"], r["ci_high"])
        rows.append([e(r["a"]), e(r["b"]), r["wins_a"], r["wins_b"], r["ties"], win, ci])
    header = ["A", "B", "A wins", "B wins", "ties", "win rate A", "95% CI"]
    for row, r in zip(rows, ctx["ratings"], strict=True):
        row += [r["judge"], r["flips"]]
    header += ["judge vs people", "judge flips when swapped"]
    return _md_section("Human side-by-side ratings", header, rows)


def _md_champion(ctx: dict[str, Any]) -> list[str]:
    e, out = md_escape, []
    for c in ctx["champion"]:
        version = f" ({e(c['version'])})" if c["version"] else ""
        mark = ("✔ " if c["passed"] else "✘ ") + e(c["reason"]) if c["reason"] else ""
        counts = (
            f"{c['n']} items: {c['unchanged']} unchanged, {c['n_gained']} gained, "
            f"{c['n_lost']} lost" + (f", {c['unscored']} unscored" if c["unscored"] else "")
        )
        out += _md_section(
            f"Champion vs challenger: {e(c['challenger'])} vs production{version}",
            ["", e(c["challenger"]), "production"],
            [[e(c["metric"]), c["challenger_value"], c["champion_value"]]],
            *[note for note in (mark, counts) if note],
        )
        for label, rows in (("Lost (production was right)", c["lost"]), ("Gained", c["gained"])):
            if rows:
                keys = ("item_id", "challenger_output", "champion_output")
                cells = [[e(r[k]) for k in keys] for r in rows]
                header = ["item", e(c["challenger"]), "production"]
                out += [f"### {label}", "", *md_table(header, cells), ""]
    return out


def _md_training(ctx: dict[str, Any]) -> list[str]:
    if not ctx["train_runs"]:
        return []
    e = md_escape
    rows = [
        [e(t.name), e(t.method), e(t.status), t.steps, cell(t.best_val_loss, 4), e(t.stop_reason)]
        for t in ctx["train_runs"]
    ]
    header = ["run", "method", "status", "steps", "best val loss", "stop reason"]
    return _md_section("Training runs", header, rows)


def _md_curve(ctx: dict[str, Any]) -> list[str]:
    if not ctx["curve"]:
        return []
    e = md_escape
    return _md_section(
        "Learning curve",
        ["training examples", f"{e(ctx['primary'])} on {e(ctx['split'])}"],
        [[pt["n"], pt["value"]] for pt in ctx["curve"]],
        "Reading it: still rising at the right end means more examples of the same kind should "
        "help; flat means improve the data or the prompt instead.",
    )


def _md_worst(ctx: dict[str, Any]) -> list[str]:
    e = md_escape
    out = ["## Worst examples", ""]
    for name, rows in ctx["worst"].items():
        out += [f"### {e(name)}", ""]
        if not rows:
            out += ["No failures on the primary metric.", ""]
            continue
        out += md_table(
            ["item", "prompt", "output", "expected", "scores"],
            [
                [
                    e(r["item_id"]),
                    e(r["prompt"], 200),
                    e(r["output"], 200),
                    e(r["reference"], 120),
                    e(r["scores"]),
                ]
                for r in rows
            ],
        )
        out.append("")
    return out


def render(
    inputs: ReportInputs, train_runs: Sequence[str | Path] = (), sealed: ReportInputs | None = None
) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` into the evaluation's folder; with
    ``sealed`` (the sealed test evaluation), both cover it too. The inputs come from
    :func:`tunewise.decide.report_inputs.report_inputs`, which builds what is missing."""
    ctx = build_context(inputs, [Path(p) for p in train_runs], sealed)
    html_path, md_path = inputs.eval_dir / "report.html", inputs.eval_dir / "report.md"
    atomic_write_text(html_path, render_html(ctx))
    atomic_write_text(md_path, render_markdown(ctx))
    return html_path, md_path
