"""Synthetic EvalRuns for the statistics, gate, report and rating tests (no model needed)."""

from __future__ import annotations

import numpy as np

from tunewise.eval.results import CandidateResult, EvalRun, ItemResult

LABELS = ["billing", "bug", "feature", "account"]


def make_run(
    accs: dict[str, float],
    n: int = 200,
    *,
    seed: int = 0,
    judge_nan: dict[str, float] | None = None,
    format_rate: dict[str, float] | None = None,
    primary: str = "accuracy",
) -> EvalRun:
    """Each candidate is right with probability ``accs[name]`` on items with a shared difficulty."""
    rng = np.random.default_rng(seed)
    gold = rng.choice(LABELS, n)
    difficulty = rng.random(n)  # shared across candidates: that is what pairing exploits
    candidates = []
    for name, acc in accs.items():
        items = []
        for i in range(n):
            ok = difficulty[i] * 0.5 + rng.random() * 0.5 < acc
            pred = (
                str(gold[i]) if ok else str(rng.choice([lab for lab in LABELS if lab != gold[i]]))
            )
            fmt = float(rng.random() < (format_rate or {}).get(name, 1.0))
            judge = 0.3 + 0.6 * ok + 0.1 * rng.random()
            if rng.random() < (judge_nan or {}).get(name, 0.0):
                judge = float("nan")
            items.append(
                ItemResult(
                    item_id=f"item-{i:04d}",
                    output=f"Category: {pred}" if fmt else f"I think it is {pred} <b>maybe</b>",
                    scores={"accuracy": float(ok), "format_compliance": fmt, "judge": judge},
                    gold=str(gold[i]),
                    predicted=pred,
                    meta={
                        "prompt": f"Ticket #{i}: my invoice & <script>alert(1)</script> is wrong"
                    },
                )
            )
        candidates.append(CandidateResult(name=name, kind=name.split("-")[0], items=items))
    return EvalRun(
        project="triage",
        split="val",
        split_hash="abc123",
        primary_metric=primary,
        item_ids=[f"item-{i:04d}" for i in range(n)],
        candidates=candidates,
    )


def binary_run(columns: dict[str, list[int]], metric: str = "accuracy") -> EvalRun:
    """Exact per-item 0/1 scores per candidate."""
    n = len(next(iter(columns.values())))
    ids = [f"q{i}" for i in range(n)]
    cands = [
        CandidateResult(
            name=name,
            kind=name,
            items=[
                ItemResult(
                    item_id=ids[i],
                    output=str(v),
                    scores={metric: float(v), "format_compliance": 1.0},
                )
                for i, v in enumerate(vals)
            ],
        )
        for name, vals in columns.items()
    ]
    return EvalRun(
        project="p",
        split="val",
        split_hash="h",
        primary_metric=metric,
        item_ids=ids,
        candidates=cands,
    )


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch_chromium(playwright):
    """Debian's chromium through Playwright (never `playwright install`: it downloads browsers)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def write_train_run(path, steps: int = 60) -> None:
    import math

    from tunewise.rundir import RunDir

    rows = []
    for s in range(1, steps + 1):
        row = {"step": s, "epoch": s / 30, "train_loss": 2.4 * math.exp(-s / 25) + 0.5}
        if s % 10 == 0:
            row["val_loss"] = 2.3 * math.exp(-s / 30) + 0.7
            row["repetition"] = 0.05 + 0.004 * s
        rows.append(row)
    RunDir(path).write(
        {
            "status": "completed",
            "method": "lora",
            "metrics": rows,
            "best_val_loss": 0.7123,
            "stop_reason": "max_steps",
            "wall_time_s": 12.0,
        }
    )
