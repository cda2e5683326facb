"""The sealed test split's part of the report, beside the validation results; and what each
evaluation took (:func:`eval_time`), for both splits.

``tunewise run --final`` evaluates the sealed test split once, after the gate has decided on
validation. The report shows it in a section of its own, clearly marked: the split, its hash, which
use of the split this was, the candidates' scores with their intervals, the gate's verdict on it
and the evaluation time of every candidate that was actually run. The one-use warning says why
these numbers must not feed back into any choice.
"""

from __future__ import annotations

from typing import Any

from tunewise.eval import figures
from tunewise.eval.report_tables import (
    ReportInputs,
    md_escape,
    md_table,
    metric_rows,
    pair_rows,
    shown_order,
)
from tunewise.eval.results import EvalRun

ONE_USE = (
    "The sealed test split is used once, after every choice was made on validation: these "
    "numbers are the final, unbiased estimate. Changing the prompt, the data or the training "
    "because of them makes them optimistic; every use is recorded."
)


def sealed_context(inputs: ReportInputs) -> dict[str, Any]:
    """What the report shows of the sealed test evaluation."""
    test_dir, run, comp, gate_cfg = inputs.eval_dir, inputs.run, inputs.comp, inputs.gate_cfg
    verdicts, provisional = inputs.verdicts, inputs.provisional
    baselines, names, metrics = shown_order(comp, run, gate_cfg)
    colors = figures.colors(names, baselines)
    return {
        "dir": str(test_dir),
        "split": run.split,
        "split_hash": run.split_hash[:12],
        "n_items": len(run.item_ids),
        "final_use": run.meta.get("final_use"),
        "repeated": run.meta.get("warning"),  # set when the split had been evaluated before
        "one_use": ONE_USE,
        "metrics": metrics,
        "table": metric_rows(comp, names, metrics, baselines, colors),
        "pairs_primary": [p for p in pair_rows(comp) if p["primary"]],
        "verdicts": verdicts,
        "provisional": provisional,
        "eval_time": eval_time(run),
    }


def eval_time(run: EvalRun) -> str:
    """What evaluating each candidate that was run took, from ``eval.json``: every candidate in
    it, none that was only configured. A candidate whose answers all came from the generation
    cache says so, since its time is not what computing them cost."""
    parts, total = [], 0.0
    for c in run.candidates:
        seconds = float(c.meta.get("seconds", 0.0))
        total += seconds
        cached = c.meta.get("cache_misses") == 0 and c.meta.get("cache_hits", 0) > 0
        parts.append(f"{c.name} {seconds:.1f} s" + (" (answers from the cache)" if cached else ""))
    return f"{', '.join(parts)}; total {total:.1f} s for {len(run.candidates)} candidates"


def md_sealed(ctx: dict[str, Any]) -> list[str]:
    """The sealed test section of report.md (empty without one)."""
    s = ctx.get("sealed")
    if not s:
        return []
    e = md_escape
    use = f", final use #{s['final_use']}" if s["final_use"] else ""
    out = [
        "## SEALED TEST SPLIT (one use)",
        "",
        f"> ⚠ {e(s['one_use'])}",
        "",
        f"Split `{e(s['split'])}` ({s['n_items']} items, hash {e(s['split_hash'])}{use}).",
        "",
    ]
    if s["repeated"]:
        out += [f"> ⚠ {e(s['repeated'])}", ""]
    for v in s["verdicts"]:
        out += [f"**{'✅' if v.ship else '⛔'} on test: {e(v.summary)}**", ""]
        out += [f"- {'✔' if r.passed else '✘'} {e(r.reason)}" for r in v.reasons]
        out += [f"- ✘ guard {e(g)}" for g in v.guard_failures] + [""]
    out += md_table(
        ["candidate", *(e(m) for m in s["metrics"])],
        [
            [
                e(row["name"]) + (" (baseline)" if row["is_baseline"] else ""),
                *("–" if c is None else f"{c['value']} [{c['ci']}]" for c in row["cells"]),
            ]
            for row in s["table"]
        ],
    )
    out += ["", f"Evaluation time on test: {e(s['eval_time'])}.", ""]
    return out
