"""The learning curve: the same fine-tune trained on 25% and 50% of train, beside the full run.

It answers "would more data help?" before anyone labels more. Each smaller run uses the same
config (same epochs, so fewer steps; a ``train.max_steps`` is scaled with the subset so the
epochs stay equal), the same validation items and the same graders; the points
(training examples, primary metric on val) go to ``learning_curve.json`` beside the ladder's
evaluation, where :func:`tunewise.decide.advise.facts_from_dir` reads them and the advisor
extrapolates.

Subsets are nested (the 25% run's examples are all in the 50% run's) and stratified by label:
examples are ordered so that every prefix holds each label in proportion to its share of train,
so a small subset never loses a whole class by chance.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tunewise.data.formats import infer_labels
from tunewise.data.schema import Example
from tunewise.fsio import atomic_write_json, atomic_write_text

FRACTIONS = (0.25, 0.5)  # the full run supplies the 100% point
CURVE_FILE = "learning_curve.json"


def stratified_order(
    examples: list[Example], *, seed: int, output_pattern: str | None = None
) -> list[int]:
    """Indices of ``examples`` such that every prefix is (nearly) label-proportional.

    The j-th of a label's c examples (shuffled) gets the key (j + 0.5) / c; sorting by key spreads
    each label evenly over the order. Without labels the key is a plain shuffle.
    """
    rng = random.Random(seed)
    fmt, labels = infer_labels([ex.target for ex in examples], output_pattern)
    strata: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        key = "|".join(lab[f] for f in fmt.label_fields) if (lab and fmt.label_fields) else ""
        strata.setdefault(key, []).append(i)
    keyed: list[tuple[float, float, int]] = []
    for members in strata.values():
        rng.shuffle(members)
        c = len(members)
        keyed += [((j + 0.5) / c, rng.random(), i) for j, i in enumerate(members)]
    return [i for _, _, i in sorted(keyed)]


def subset_sizes(n_train: int, fractions: tuple[float, ...] = FRACTIONS) -> list[int]:
    """Distinct subset sizes below ``n_train`` (at least 1 example each)."""
    sizes = sorted({max(1, round(f * n_train)) for f in fractions})
    return [s for s in sizes if s < n_train]


def write_subset(train_path: Path, out: Path, n: int, order: list[int]) -> Path:
    """The first ``n`` examples of ``order`` as JSONL, in their original file order."""
    # split("\n"), not splitlines(): U+2028 and friends may sit raw inside a JSON line.
    lines = [ln for ln in train_path.read_text(encoding="utf-8").split("\n") if ln.strip()]
    keep = sorted(order[:n])
    atomic_write_text(out, "".join(lines[i] + "\n" for i in keep))
    return out


def save_curve(path: Path, points: list[tuple[int, float]], meta: dict[str, Any]) -> None:
    atomic_write_json(path, {"points": [[n, v] for n, v in sorted(points)], **meta})


def load_curve(path: Path) -> list[tuple[int, float]]:
    """The (examples, metric) points; also reads the bare list format of hand-written curves."""
    raw = json.loads(path.read_text())
    pts = raw["points"] if isinstance(raw, dict) else raw
    return [(int(n), float(v)) for n, v in pts]
