"""The report's figures: matplotlib (Agg backend) drawn to base64 PNG data URIs.

Each function takes plain numbers and names and returns a ``data:image/png;base64,...`` string
that the HTML report inlines, so the report stays one self-contained file.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tunewise.eval.results import Comparison, ItemResult

MAX_CM_CLASSES = 25


def png(fig) -> str:
    import matplotlib.pyplot as plt  # lazy: matplotlib, ~0.4 s to import, only for figures

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def colors(names: Sequence[str], baselines: Sequence[str]) -> dict[str, str]:
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
def metrics_figure(
    comp: Comparison, names: list[str], metrics: list[str], colors: dict[str, str]
) -> str:
    import matplotlib  # lazy: matplotlib, ~0.4 s to import, only for figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend on import

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
    return png(fig)


def confusion_figure(items: list[ItemResult], name: str) -> tuple[str, str]:
    """Confusion matrix (rows = gold, normalised per row); the most frequent classes when many."""
    import matplotlib  # lazy: matplotlib, ~0.4 s to import, only for figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend on import

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
        note = (
            f"the {MAX_CM_CLASSES} most frequent of {len(classes)} gold classes; "
            "other predictions pooled"
        )
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
    return png(fig), note


def loss_figure(runs: Sequence[tuple[str, list[dict[str, Any]]]]) -> str | None:
    """Train and validation loss per step for each named run, repetition on a second axis."""
    import matplotlib  # lazy: matplotlib, ~0.4 s to import, only for figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend on import

    if not any(rows for _, rows in runs):
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    palette = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777"]
    for k, (name, rows) in enumerate(runs):
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
                    label=f"{name} {label}",
                    linewidth=1.5,
                )
    # Repetition of sampled generations (from TRAIN's overfitting check) on its own axis: falling
    # validation loss with rising repetition is the overfitting signature the article warns of.
    rep_ax = None
    for k, (name, rows) in enumerate(runs):
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
                label=f"{name} repetition",
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
    return png(fig)


def curve_figure(points: list[tuple[int, float]], metric: str) -> str:
    import matplotlib  # lazy: matplotlib, ~0.4 s to import, only for figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend on import

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
    return png(fig)
