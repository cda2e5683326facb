"""The evaluation report: one self-contained HTML file and a Markdown summary.

The HTML has no external references (figures are base64 PNGs drawn with matplotlib's Agg
backend, CSS is inline), so it can be mailed, attached to a ticket or opened offline. Every piece
of user text (prompts, outputs, labels, candidate names) is escaped by Jinja2's autoescape in
HTML and by :func:`md_escape` in Markdown: model outputs are untrusted input.

Inputs, all from ``EVAL_DIR``: ``eval.json`` (required), ``comparison.json`` (computed and saved
when absent), ``verdict.json`` (when absent, each fine-tuned candidate is gated with the project's
gate settings, marked provisional), ``ratings.sqlite`` (human side-by-side ratings, optional), and
each training run's ``run.json`` for loss curves.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from tunewise.config import GateConfig
from tunewise.errors import UserError
from tunewise.eval import stats
from tunewise.eval.results import Comparison, EvalRun, ItemResult, Verdict
from tunewise.fsio import atomic_write_text
from tunewise.gate import decide, gate_config_from_meta, load_verdict

WORST_K = 5
MAX_CM_CLASSES = 25
_TRUNC = 600


# ----------------------------------------------------------------------------- helpers
def split_lookup(run: EvalRun) -> dict[str, tuple[str, str]]:
    """item_id -> (last user turn, reference answer), read back from the evaluated split file.

    The harness records the split's path and ids items by content, so the report and the rating
    page can show prompts without eval.json carrying them. If the file is gone or changed
    (its hash no longer matches), there is simply nothing to show.
    """
    split_path = run.meta.get("split_path")
    if not isinstance(split_path, str):
        return {}
    return _split_lookup(split_path, run.split_hash)


@functools.lru_cache(maxsize=4)
def _split_lookup(split_path: str, split_hash: str) -> dict[str, tuple[str, str]]:
    if not Path(split_path).is_file():
        return {}
    try:
        from tunewise.data.schema import load_examples
        from tunewise.eval.harness import item_ids
        from tunewise.fsio import sha256_file

        if split_hash and sha256_file(split_path) != split_hash:
            return {}
        examples = load_examples(split_path)
        return {
            i: (ex.user_text, ex.target) for i, ex in zip(item_ids(examples), examples, strict=True)
        }
    except (UserError, ImportError, OSError, ValueError):
        return {}


def item_prompt(item: ItemResult, run: EvalRun | None = None) -> str:
    """The user-visible prompt of an item, wherever the harness put it."""
    meta = item.meta or {}
    for key in ("prompt", "input", "question"):
        if isinstance(meta.get(key), str):
            return meta[key]
    msgs = meta.get("messages")
    if isinstance(msgs, list):
        users = [
            m.get("content", "") for m in msgs if isinstance(m, dict) and m.get("role") == "user"
        ]
        if users:
            return str(users[-1])
    if run is not None:
        prompts = run.meta.get("prompts")
        if isinstance(prompts, dict) and isinstance(prompts.get(item.item_id), str):
            return prompts[item.item_id]
        found = split_lookup(run).get(item.item_id)
        if found:
            return found[0]
    return ""


def item_reference(item: ItemResult, run: EvalRun | None = None) -> str:
    meta = item.meta or {}
    for key in ("reference", "target", "expected"):
        if isinstance(meta.get(key), str):
            return meta[key]
    if run is not None:
        found = split_lookup(run).get(item.item_id)
        if found:
            return found[1]
    return item.gold or ""


def md_escape(text: Any, limit: int | None = None) -> str:
    """Text safe inside a Markdown table cell: no raw HTML, no table or emphasis syntax."""
    s = str(text)
    if limit is not None and len(s) > limit:
        s = s[:limit] + "…"
    s = s.replace("\\", "\\\\")
    s = re.sub(r"([`*_\[\]|~])", r"\\\1", s)
    s = s.replace("<", "&lt;").replace("\r", " ").replace("\n", " ⏎ ")
    return s


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _sfmt(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:+.3f}"


def _pfmt(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _colors(names: Sequence[str], baselines: Sequence[str]) -> dict[str, str]:
    # Baselines in muted tones, the candidates under test in strong ones: the eye finds them.
    muted = ["#9aa5b1", "#7b8794", "#616e7c", "#52606d", "#3e4c59"]
    strong = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2"]
    out, i, j = {}, 0, 0
    for name in names:
        if name in baselines:
            out[name] = muted[i % len(muted)]
            i += 1
        else:
            out[name] = strong[j % len(strong)]
            j += 1
    return out


# ----------------------------------------------------------------------------- figures
def _metrics_figure(
    comp: Comparison, names: list[str], metrics: list[str], colors: dict[str, str]
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(metrics) + 2), 3.6))
    width = 0.8 / max(1, len(names))
    x = np.arange(len(metrics))
    for k, name in enumerate(names):
        vals, lo, hi = [], [], []
        for m in metrics:
            e = comp.metrics[name].get(m)
            v = e.value if e and math.isfinite(e.value) else np.nan
            vals.append(v)
            # A BCa interval need not contain its estimate; matplotlib refuses negative error bars.
            lo.append(max(0.0, v - e.ci_low) if e and math.isfinite(e.ci_low) else 0.0)
            hi.append(max(0.0, e.ci_high - v) if e and math.isfinite(e.ci_high) else 0.0)
        ax.bar(
            x + (k - (len(names) - 1) / 2) * width,
            vals,
            width * 0.92,
            yerr=[lo, hi],
            capsize=3,
            color=colors[name],
            label=name,
            error_kw={"elinewidth": 1, "ecolor": "#1f2933"},
        )
    ax.set_xticks(x, metrics)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (95% CI)")
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(
        ncols=min(len(names), 6), loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False
    )
    return _png(fig)


def _confusion_figure(items: list[ItemResult], name: str) -> tuple[str, str]:
    """Confusion matrix (rows = gold, normalised per row); the most frequent classes when many."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [
        (it.gold, it.predicted if it.predicted is not None else "(unparsed)")
        for it in items
        if it.gold is not None
    ]
    gold_counts: dict[str, int] = {}
    for g, _ in pairs:
        gold_counts[g] = gold_counts.get(g, 0) + 1
    classes = sorted(gold_counts, key=lambda c: (-gold_counts[c], c))
    note = ""
    if len(classes) > MAX_CM_CLASSES:
        note = f"the {MAX_CM_CLASSES} most frequent of {len(classes)} gold classes; other predictions pooled"
        classes = classes[:MAX_CM_CLASSES]
    classes = sorted(classes)
    cols = [*classes]
    if any(p not in classes for _, p in pairs):
        cols.append("(other)")
    ci = {c: i for i, c in enumerate(classes)}
    mat = np.zeros((len(classes), len(cols)))
    for g, p in pairs:
        if g in ci:
            mat[ci[g], ci.get(p, len(cols) - 1)] += 1
    norm = mat / np.maximum(mat.sum(axis=1, keepdims=True), 1)
    size = min(11.0, 2.5 + 0.38 * len(cols))
    fig, ax = plt.subplots(figsize=(size + 1, size * len(classes) / len(cols) + 0.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(f"{name}: confusion matrix (row-normalised)", fontsize=10)
    if len(cols) <= 12:
        for i in range(len(classes)):
            for j in range(len(cols)):
                if mat[i, j]:
                    ax.text(
                        j,
                        i,
                        int(mat[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if norm[i, j] > 0.6 else "#1f2933",
                    )
    fig.colorbar(im, ax=ax, fraction=0.04)
    return _png(fig), note


@dataclass
class TrainRunInfo:
    name: str
    method: str
    status: str
    stop_reason: str
    best_val_loss: float | None
    steps: int


def _load_train_run(path: Path) -> tuple[TrainRunInfo, list[dict[str, Any]]]:
    run_json = path / "run.json" if path.is_dir() else path
    try:
        raw = json.loads(run_json.read_text())
    except FileNotFoundError:
        raise UserError(
            f"{run_json}: not found (expected a training run directory with run.json)"
        ) from None
    except ValueError as exc:
        raise UserError(f"{run_json}: invalid JSON: {exc}") from None
    rows = [r for r in raw.get("metrics", []) if isinstance(r, dict) and "step" in r]
    info = TrainRunInfo(
        name=run_json.parent.name,
        method=str(raw.get("method", "?")),
        status=str(raw.get("status", "?")),
        stop_reason=str(raw.get("stop_reason") or ""),
        best_val_loss=raw.get("best_val_loss"),
        steps=max((int(r["step"]) for r in rows), default=0),
    )
    return info, rows


def _loss_figure(runs: list[tuple[TrainRunInfo, list[dict[str, Any]]]]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(rows for _, rows in runs):
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    palette = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777"]
    for k, (info, rows) in enumerate(runs):
        color = palette[k % len(palette)]
        for key, style, label in (("train_loss", "-", "train"), ("val_loss", "--", "val")):
            pts = [
                (r["step"], r[key])
                for r in rows
                if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(
                    xs,
                    ys,
                    style,
                    color=color,
                    marker="o" if key == "val_loss" else None,
                    markersize=3,
                    label=f"{info.name} {label}",
                    linewidth=1.5,
                )
    # Repetition of sampled generations (from TRAIN's overfitting check) on its own axis: falling
    # validation loss with rising repetition is the overfitting signature the article warns of.
    rep_ax = None
    for k, (info, rows) in enumerate(runs):
        pts = [
            (r["step"], r["repetition"])
            for r in rows
            if isinstance(r.get("repetition"), (int, float)) and math.isfinite(r["repetition"])
        ]
        if pts:
            rep_ax = rep_ax or ax.twinx()
            xs, ys = zip(*pts, strict=True)
            rep_ax.plot(
                xs,
                ys,
                ":",
                color=palette[k % len(palette)],
                marker="x",
                markersize=4,
                label=f"{info.name} repetition",
                linewidth=1,
            )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.spines[["top"]].set_visible(False)
    handles, labels = ax.get_legend_handles_labels()
    if rep_ax is not None:
        rep_ax.set_ylabel("repetition (generations)")
        rep_ax.set_ylim(0, 1)
        rep_ax.spines[["top"]].set_visible(False)
        h2, l2 = rep_ax.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    else:
        ax.spines[["right"]].set_visible(False)
    ax.legend(handles, labels, frameon=False, fontsize=8)
    return _png(fig)


def _curve_figure(points: list[tuple[int, float]], metric: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    xs, ys = zip(*points, strict=True)
    ax.plot(xs, ys, "o-", color="#2563eb", linewidth=1.5)
    ax.set_xscale("log")  # the advisor extrapolates metric ~ a + b ln(n): a line here
    ax.set_xticks(list(xs), [str(x) for x in xs])
    ax.minorticks_off()
    ax.set_xlabel("training examples (log scale)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _load_curve(eval_dir: Path) -> list[tuple[int, float]]:
    from tunewise.learning_curve import CURVE_FILE, load_curve

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
                    f"{m}={_fmt(s, 2)}" for m, s in sorted(it.scores.items()) if s is not None
                ),
            }
        )
    return out


def _verdicts(
    eval_dir: Path, comp: Comparison, run: EvalRun, gate_cfg: GateConfig, *, use_saved: bool = True
) -> tuple[list[Verdict], bool]:
    # verdict.json is the decision of record; the ladder also leaves one verdict-<candidate>.json
    # per fine-tune, and the reader wants to see why the others lost too.
    files = [eval_dir / "verdict.json", *sorted(eval_dir.glob("verdict-*.json"))]
    found: dict[str, Verdict] = {}
    for f in files if use_saved else []:
        if f.is_file():
            v = load_verdict(f)
            found.setdefault(v.candidate, v)
    if found:
        return list(found.values()), False
    out = []
    for name in comp.metrics:
        if name in gate_cfg.baselines or comp.primary_metric not in comp.metrics[name]:
            continue
        try:
            out.append(decide(comp, name, gate_cfg))
        except UserError:
            continue
    return out, True


def _load_ratings(eval_dir: Path) -> list[dict[str, Any]]:
    from tunewise.eval import human

    db = eval_dir / human.DB_NAME
    if not db.is_file():
        return []
    return [s for s in human.summaries(db) if s["n"] > 0]


def build_context(eval_dir: Path, train_runs: Sequence[Path] = ()) -> dict[str, Any]:
    eval_dir = Path(eval_dir)
    eval_json = eval_dir / "eval.json"
    if not eval_json.is_file():
        raise UserError(f"{eval_json}: not found (run `tunewise eval` to create it)")
    try:
        run = EvalRun.load(eval_json)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{eval_json}: not a valid evaluation file: {exc}") from None
    gate_cfg = gate_config_from_meta(run.meta)
    comp_path = eval_dir / "comparison.json"
    comp = stats.load_comparison(comp_path) if comp_path.is_file() else None
    stale = comp is None or stats.is_stale(comp, run)
    if stale:
        comp = stats.compare(run, baselines=gate_cfg.baselines, alpha=gate_cfg.alpha)
        stats.save_comparison(comp, comp_path)
    # Saved verdicts drawn from an older evaluation are not shown (nor deleted: they are the
    # user's files); the report gates afresh and says it is provisional.
    verdicts, provisional = _verdicts(eval_dir, comp, run, gate_cfg, use_saved=not stale)

    # Baselines first in their configured order, then the candidates in evaluation order
    # (comparison.json's keys come back sorted).
    baselines = [b for b in comp.meta.get("baselines", gate_cfg.baselines) if b in comp.metrics]
    order = [*baselines, *(c.name for c in run.candidates), *comp.metrics]
    names = list(dict.fromkeys(n for n in order if n in comp.metrics))
    primary = comp.primary_metric
    metrics = sorted(
        {m for per in comp.metrics.values() for m in per},
        key=lambda m: (m != primary, m == "format_compliance", m),
    )
    colors = _colors(names, baselines)
    best = max(
        (
            n
            for n in names
            if primary in comp.metrics[n] and math.isfinite(comp.metrics[n][primary].value)
        ),
        key=lambda n: comp.metrics[n][primary].value,
        default=None,
    )
    table = [
        {
            "name": n,
            "is_baseline": n in baselines,
            "color": colors[n],
            "cells": [
                {
                    "value": _fmt(e.value),
                    "ci": f"{_fmt(e.ci_low)}–{_fmt(e.ci_high)}",
                    "n": e.n,
                    "best": False,
                }
                if (e := comp.metrics[n].get(m))
                else None
                for m in metrics
            ],
        }
        for n in names
    ]
    for j, m in enumerate(metrics):  # bold the best value per metric
        vals = [
            (comp.metrics[n][m].value, i)
            for i, n in enumerate(names)
            if m in comp.metrics[n] and math.isfinite(comp.metrics[n][m].value)
        ]
        if vals:
            top = max(v for v, _ in vals)
            for v, i in vals:
                if v == top:
                    table[i]["cells"][j]["best"] = True
    pairs = [
        {
            "candidate": p.candidate,
            "baseline": p.baseline,
            "metric": p.metric,
            "primary": p.metric == primary,
            "cand": _fmt(p.candidate_value),
            "base": _fmt(p.baseline_value),
            "diff": _sfmt(p.diff),
            "ci": f"{_sfmt(p.ci_low)} … {_sfmt(p.ci_high)}",
            "p": _pfmt(p.p_value),
            "significant": math.isfinite(p.p_value) and p.p_value < comp.meta.get("alpha", 0.05),
            "test": p.test,
            "n": p.n,
            "mdd": _fmt(p.min_detectable_diff),
            # flag what the user can act on: a difference was seen but this set cannot confirm it
            "underpowered": p.underpowered
            and p.diff != 0
            and not p.p_value < comp.meta.get("alpha", 0.05),
        }
        for p in sorted(comp.pairs, key=lambda p: (p.metric != primary, p.candidate, p.metric))
    ]
    power_warnings = [
        f"{p.candidate} vs {p.baseline}: observed {p.metric} difference {_sfmt(p.diff)} (p={_pfmt(p.p_value)}) "
        f"is below what {p.n} items can detect ({_fmt(p.min_detectable_diff)} at 80% power)"
        + (
            f"; about {w['items_needed']} items would be needed"
            if (w := _needed(comp, p)) and w.get("items_needed")
            else ""
        )
        for p in comp.pairs
        if p.metric == primary
        and p.underpowered
        and not (p.p_value < comp.meta.get("alpha", 0.05))
        and p.diff != 0
    ]
    champion = _champion_views(run, verdicts, primary)
    cm_png, cm_note = (None, "")
    if best is not None and any(it.gold is not None for it in run.candidate(best).items):
        cm_png, cm_note = _confusion_figure(run.candidate(best).items, best)
    loaded = [_load_train_run(Path(p)) for p in train_runs]
    curve = _load_curve(eval_dir)
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
        "table": table,
        "pairs": pairs,
        "pairs_primary": [p for p in pairs if p["primary"]],
        "pairs_other": [p for p in pairs if not p["primary"]],
        "power_warnings": power_warnings,
        "verdicts": verdicts,
        "provisional": provisional,
        "gate": gate_cfg.model_dump(),
        "alpha": comp.meta.get("alpha", gate_cfg.alpha),
        "ci_method": comp.meta.get("ci_method", "bca"),
        "n_boot": comp.meta.get("n_boot"),
        "missing_baselines": comp.meta.get("missing_baselines", []),
        "nan_notes": [
            f"{c}: {m} unparsed on {k} item(s)"
            for c, per in nan_counts.items()
            for m, k in per.items()
        ],
        "metrics_png": _metrics_figure(comp, names, metrics, colors) if metrics else None,
        "best": best,
        "cm_png": cm_png,
        "cm_note": cm_note,
        "train_runs": [info for info, _ in loaded],
        "loss_png": _loss_figure(loaded) if loaded else None,
        "curve": [{"n": n, "value": _fmt(v)} for n, v in curve],
        "curve_png": _curve_figure(curve, primary) if len(curve) > 1 else None,
        "worst": {n: _worst(run, n, primary) for n in names},
        "ratings": _load_ratings(eval_dir),
        "champion": champion,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _champion_views(run: EvalRun, verdicts: list[Verdict], primary: str) -> list[dict[str, Any]]:
    """Champion vs challenger side by side, for each gated candidate, when production was run."""
    from tunewise.decisions import CHAMPION
    from tunewise.eval.flips import side_by_side

    names = {c.name for c in run.candidates}
    if CHAMPION not in names:
        return []
    views = []
    for v in verdicts:
        if v.candidate == CHAMPION or v.candidate not in names:
            continue
        view = side_by_side(run, v.candidate, CHAMPION, primary)
        view["version"] = (v.champion or {}).get("version", "")
        view["passed"] = (v.champion or {}).get("passed")
        view["reason"] = (v.champion or {}).get("reason", "")
        for row in (*view["gained"], *view["lost"]):
            for key in ("challenger_output", "champion_output"):
                text = row[key]
                row[key] = text if len(text) <= 200 else text[:200] + "…"
        view["challenger_value"] = _fmt(view["challenger_value"])
        view["champion_value"] = _fmt(view["champion_value"])
        views.append(view)
    return views


def _needed(comp: Comparison, p) -> dict[str, Any] | None:
    for w in comp.meta.get("underpowered", []):
        if (w["candidate"], w["baseline"], w["metric"]) == (p.candidate, p.baseline, p.metric):
            return w
    return None


# ----------------------------------------------------------------------------- output
def render_html(ctx: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    template = (
        resources.files("tunewise").joinpath("assets/report.html.j2").read_text(encoding="utf-8")
    )
    return env.from_string(template).render(**ctx)


def _md_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table's lines; cells must already be escaped."""
    return [
        "| " + " | ".join(str(h) for h in header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]


def render_markdown(ctx: dict[str, Any]) -> str:
    e = md_escape
    out = [f"# {e(ctx['title'])}", ""]
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
    out += ["## Candidates × metrics", ""]
    out += _md_table(
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
    out.append("")
    for note in ctx["nan_notes"]:
        out.append(f"- judge parse failures: {e(note)}")
    if ctx["nan_notes"]:
        out.append("")
    out += ["## Paired tests", ""]
    out += _md_table(
        [
            "candidate",
            "baseline",
            "metric",
            "cand",
            "base",
            "diff",
            "95% CI",
            "p",
            "test",
            "n",
            "MDD",
        ],
        [
            [
                e(p["candidate"]),
                e(p["baseline"]),
                e(p["metric"]),
                p["cand"],
                p["base"],
                p["diff"],
                p["ci"],
                p["p"],
                p["test"],
                p["n"],
                f"{p['mdd']}{' ⚠' if p['underpowered'] else ''}",
            ]
            for p in ctx["pairs"]
        ],
    )
    out += [
        "",
        "MDD: minimum detectable difference at 80% power; ⚠ = observed difference below it.",
        "",
    ]
    if ctx["ratings"]:
        out += ["## Human side-by-side ratings", ""]
        out += _md_table(
            ["A", "B", "A wins", "B wins", "ties", "win rate A", "95% CI"],
            [
                [
                    e(r["a"]),
                    e(r["b"]),
                    r["wins_a"],
                    r["wins_b"],
                    r["ties"],
                    _fmt(r["win_rate_a"]),
                    f"{_fmt(r['ci_low'])}–{_fmt(r['ci_high'])}",
                ]
                for r in ctx["ratings"]
            ],
        )
        out.append("")
    for view in ctx["champion"]:
        out += _champion_markdown(view)
    if ctx["train_runs"]:
        out += ["## Training runs", ""]
        out += _md_table(
            ["run", "method", "status", "steps", "best val loss", "stop reason"],
            [
                [
                    e(t.name),
                    e(t.method),
                    e(t.status),
                    t.steps,
                    _fmt(t.best_val_loss, 4),
                    e(t.stop_reason),
                ]
                for t in ctx["train_runs"]
            ],
        )
        out.append("")
    if ctx["curve"]:
        out += ["## Learning curve", ""]
        out += _md_table(
            ["training examples", f"{e(ctx['primary'])} on {e(ctx['split'])}"],
            [[pt["n"], pt["value"]] for pt in ctx["curve"]],
        )
        out += [
            "",
            "Reading it: still rising at the right end means more examples of the same kind should help; "
            "flat means improve the data or the prompt instead.",
            "",
        ]
    out += ["## Worst examples", ""]
    for name, rows in ctx["worst"].items():
        out.append(f"### {e(name)}")
        out.append("")
        if not rows:
            out += ["No failures on the primary metric.", ""]
            continue
        out += _md_table(
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
    out.append(f"_Generated {ctx['generated']} by tunewise. The HTML report has the figures._")
    return "\n".join(out) + "\n"


def _champion_markdown(view: dict[str, Any]) -> list[str]:
    e = md_escape
    head = f"## Champion vs challenger: {e(view['challenger'])} vs production"
    out = [head + (f" ({e(view['version'])})" if view["version"] else ""), ""]
    if view["reason"]:
        out += [f"{'✔' if view['passed'] else '✘'} {e(view['reason'])}", ""]
    out += _md_table(
        ["", e(view["challenger"]), "production"],
        [[e(view["metric"]), view["challenger_value"], view["champion_value"]]],
    )
    out += [
        "",
        f"{view['n']} items: {view['unchanged']} unchanged, {view['n_gained']} gained, "
        f"{view['n_lost']} lost" + (f", {view['unscored']} unscored" if view["unscored"] else ""),
        "",
    ]
    for label, rows in (("Lost (production was right)", view["lost"]), ("Gained", view["gained"])):
        if rows:
            out += [f"### {label}", ""]
            out += _md_table(
                ["item", e(view["challenger"]), "production"],
                [
                    [e(r["item_id"]), e(r["challenger_output"]), e(r["champion_output"])]
                    for r in rows
                ],
            )
            out.append("")
    return out


def render(eval_dir: str | Path, train_runs: Sequence[str | Path] = ()) -> tuple[Path, Path]:
    """Write ``EVAL_DIR/report.html`` (self-contained) and ``EVAL_DIR/report.md``."""
    eval_dir = Path(eval_dir)
    ctx = build_context(eval_dir, [Path(p) for p in train_runs])
    html_path, md_path = eval_dir / "report.html", eval_dir / "report.md"
    atomic_write_text(html_path, render_html(ctx))
    atomic_write_text(md_path, render_markdown(ctx))
    return html_path, md_path
