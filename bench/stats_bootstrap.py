"""Speed and calibration of ``tunewise.eval.stats.compare``.

    .venv/bin/python bench/stats_bootstrap.py [--n 3000] [--classes 150] [--n-boot 2000] \\
        [--sims 300]

Speed: a synthetic eval with 6 candidates (3 baselines), ``--n`` items, ``--classes`` labels and
three binary metrics, through ``compare`` (shared resampling weights, matrix products, sparse
per-class indicators for macro-F1) against a reference loop in the same process that resamples
item indices per replicate and recomputes every mean and a scikit-learn macro-F1. The reference
runs fewer replicates and is scaled per replicate. Both use the same data; the script checks the
two agree on the point estimates, then prints the ratio.

Calibration (``--sims`` simulated evals of 60 and 200 items): coverage of the 95% CI of an
accuracy whose true value is known, and how often McNemar rejects / the gate ships when two
candidates are equally good (both must stay at or below alpha = 0.05, up to simulation noise).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from tunewise.config import GateConfig
from tunewise.decide.gate import decide
from tunewise.eval import stats
from tunewise.eval.results import CandidateResult, EvalRun, ItemResult

NAMES = ["prompt", "fewshot", "rag", "lora", "qlora", "full"]


def synthetic(n: int, k: int, seed: int = 0) -> EvalRun:
    rng = np.random.default_rng(seed)
    labels = [f"intent_{i}" for i in range(k)]
    gold = rng.integers(0, k, n)
    cands = []
    for name, acc in zip(NAMES, [0.5, 0.6, 0.7, 0.8, 0.82, 0.85], strict=True):
        ok = rng.random(n) < acc
        pred = np.where(ok, gold, rng.integers(0, k, n))
        fmt = rng.random(n) < 0.97
        items = [
            ItemResult(
                item_id=str(i),
                output="",
                gold=labels[gold[i]],
                predicted=labels[pred[i]],
                scores={
                    "accuracy": float(pred[i] == gold[i]),
                    "exact_match": float(pred[i] == gold[i]),
                    "format_compliance": float(fmt[i]),
                },
            )
            for i in range(n)
        ]
        cands.append(CandidateResult(name=name, kind=name, items=items))
    return EvalRun(
        project="bench",
        split="val",
        split_hash="-",
        primary_metric="accuracy",
        item_ids=[str(i) for i in range(n)],
        candidates=cands,
    )


def reference(run: EvalRun, n_boot: int, seed: int) -> dict[tuple[str, str], float]:
    """The textbook loop: resample indices, recompute every statistic, per replicate."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(seed)
    n = len(run.item_ids)
    cols = {}
    for c in run.candidates:
        for m in ("accuracy", "exact_match", "format_compliance"):
            cols[(c.name, m)] = np.array([it.scores[m] for it in c.items])
        cols[(c.name, "gold")] = np.array([it.gold for it in c.items])
        cols[(c.name, "pred")] = np.array([it.predicted for it in c.items])
    means: dict[tuple[str, str], float] = {}
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        for c in run.candidates:
            for m in ("accuracy", "exact_match", "format_compliance"):
                cols[(c.name, m)][idx].mean()
            f1_score(cols[(c.name, "gold")][idx], cols[(c.name, "pred")][idx], average="macro")
    for c in run.candidates:
        for m in ("accuracy", "exact_match", "format_compliance"):
            means[(c.name, m)] = float(cols[(c.name, m)].mean())
        means[(c.name, "macro_f1")] = float(
            f1_score(cols[(c.name, "gold")], cols[(c.name, "pred")], average="macro")
        )
    return means


def speed(n: int, k: int, n_boot: int) -> float:
    run = synthetic(n, k)
    t0 = time.perf_counter()
    comp = stats.compare(run, baselines=NAMES[:3], n_boot=n_boot)
    ours = time.perf_counter() - t0
    ref_boot = max(20, n_boot // 20)
    t0 = time.perf_counter()
    ref = reference(run, ref_boot, 0)
    ref_time = (time.perf_counter() - t0) * n_boot / ref_boot
    for (name, m), v in ref.items():
        assert abs(comp.metrics[name][m].value - v) < 1e-9, (
            name,
            m,
            comp.metrics[name][m].value,
            v,
        )
    ratio = ref_time / ours
    print(
        f"compare(): {n} items x {len(NAMES)} candidates x 4 metrics ({k} classes), {n_boot} "
        "resamples, "
        f"{len(comp.pairs)} paired tests: {ours:.2f} s"
    )
    print(
        f"reference per-replicate loop (numpy means + sklearn macro-F1), scaled from {ref_boot} "
        f"replicates: {ref_time:.1f} s"
    )
    print(f"speed-up: {ratio:.0f}x (point estimates identical)")
    return ratio


def calibration(sims: int) -> None:
    rng = np.random.default_rng(0)
    for n in (60, 200):
        covered = {"bca": 0, "percentile": 0}
        rejects = ships = 0
        for s in range(sims):
            d = rng.random(
                n
            )  # shared item difficulty: both candidates are correlated, as in real evals
            a = (0.5 * d + 0.5 * rng.random(n) < 0.5).astype(int)
            b = (0.5 * d + 0.5 * rng.random(n) < 0.5).astype(int)
            iid = (rng.random(n) < 0.8).astype(int)  # true accuracy 0.8
            ids = [str(i) for i in range(n)]
            run = EvalRun(
                project="cal",
                split="val",
                split_hash="-",
                primary_metric="accuracy",
                item_ids=ids,
                candidates=[
                    CandidateResult(
                        name=nm,
                        kind=nm,
                        items=[
                            ItemResult(
                                item_id=ids[i], output="", scores={"accuracy": float(col[i])}
                            )
                            for i in range(n)
                        ],
                    )
                    for nm, col in (("prompt", b), ("lora", a), ("iid", iid))
                ],
            )
            for method in covered:
                comp = stats.compare(
                    run, baselines=["prompt"], n_boot=1000, seed=s, ci_method=method
                )  # type: ignore[arg-type]
                e = comp.metrics["iid"]["accuracy"]
                covered[method] += e.ci_low <= 0.8 <= e.ci_high
            rejects += comp.pair("lora", "prompt", "accuracy").p_value < 0.05
            ships += decide(comp, "lora", GateConfig(baselines=["prompt"], delta=0.0)).ship
        print(
            f"n={n:4d}, {sims} sims: 95% CI coverage bca {covered['bca'] / sims:.3f}, percentile "
            f"{covered['percentile'] / sims:.3f}; equal candidates: McNemar rejects "
            f"{rejects / sims:.3f}, "
            f"gate ships {ships / sims:.3f} (alpha 0.05)"
        )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--classes", type=int, default=150)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--sims", type=int, default=300, help="0 skips the calibration")
    args = ap.parse_args()
    speed(args.n, args.classes, args.n_boot)
    if args.sims:
        calibration(args.sims)
    return 0


if __name__ == "__main__":
    sys.exit(main())
