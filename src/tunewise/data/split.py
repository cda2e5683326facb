"""Train / validation / sealed test splits that do not leak.

* **Near-duplicates stay together.** Examples whose inputs are near-duplicates (MinHash/LSH, see
  :mod:`tunewise.data.dedup`) form a cluster, and a cluster goes whole into one split: otherwise
  the model is tested on what it was trained on, and the test score is a memory score.
* **Stratified by label** when the outputs are labels (:mod:`tunewise.data.formats`): each label
  gets ``floor(n * fraction)`` or one more in val and test, the extra ones handed out by largest
  remainder so the totals are right too.
* **Deterministic**: same file, fractions and seed give byte-identical files. Examples keep their
  original order inside each split.
* **All or nothing**: the four files (``manifest.json`` holds hashes, counts per split and per
  label) are built in a staging folder beside the output folder, which is then swapped in whole,
  while the seal of ``test.jsonl`` (:mod:`tunewise.data.seal`) is committed only if the swap
  succeeds. A bad file, a bad flag, a read-only home or output, a full disk: one error line, and
  neither a half-written split nor an unsealed test file is left.
"""

from __future__ import annotations

import math
import random
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from tunewise.data.dedup import THRESHOLD, near_duplicate_clusters
from tunewise.data.files import check_output_dir
from tunewise.data.formats import infer_labels
from tunewise.data.schema import Example, input_text, load_examples
from tunewise.data.seal import content_hash, sealing
from tunewise.errors import UserError
from tunewise.fsio import (
    atomic_write_json,
    atomic_write_jsonl,
    replace_dir,
    sha256_file,
    staging_dir,
)

SPLITS = ("train", "val", "test")
SPLIT_FILES = {*(f"{s}.jsonl" for s in SPLITS), "manifest.json"}
NO_LABEL = "(no label)"


def _quotas(strata: dict[str, int], frac: float, total: int) -> dict[str, int]:
    """Per-stratum counts for one split: floor, then largest remainders until the total is met."""
    exact = {k: n * frac for k, n in strata.items()}
    out = {k: int(v) for k, v in exact.items()}
    want = round(total * frac)
    # Ties go to the bigger stratum, then by name, so the result does not depend on dict order.
    order = sorted(strata, key=lambda k: (-(exact[k] - out[k]), -strata[k], k))
    for k in order:
        if sum(out.values()) >= want:
            break
        if exact[k] - out[k] > 0:
            out[k] += 1
    return out


def assign(
    strata: list[str], clusters: list[int], *, val: float, test: float, seed: int
) -> list[str]:
    """Split name for each example, given its stratum and its near-duplicate cluster id.

    Per-stratum quotas come from :func:`_quotas`. Clusters are placed biggest first (ties in a
    seeded random order) into val or test only where every stratum they contain still has room,
    so the many singletons fill the quotas exactly at the end. A repair pass then moves the
    train cluster that best fills any quota still open (when all of a label's examples sit in
    big clusters).
    """
    n = len(strata)
    members: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(clusters):
        members[c].append(i)
    comp = {c: Counter(strata[i] for i in idx) for c, idx in members.items()}
    sizes = Counter(strata)
    need: dict[str, dict[str, int]] = {
        "test": _quotas(sizes, test, n),
        "val": _quotas(sizes, val, n),
    }

    order = sorted(members)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda c: -len(members[c]))  # stable: the shuffle breaks ties
    where: dict[int, str] = {}
    for c in order:
        fits = [sp for sp in need if all(need[sp][s] >= k for s, k in comp[c].items())]
        if fits:
            # The split that needs this cluster's main stratum most (then: test before val).
            main = comp[c].most_common(1)[0][0]
            sp = max(fits, key=lambda x: (need[x][main], x == "test"))
            if need[sp][main] > 0:
                where[c] = sp
                for s, k in comp[c].items():
                    need[sp][s] -= k
                continue
        where[c] = "train"

    def cost(sp: str, c: int) -> int:
        """Change in total |quota deviation| if cluster c moved from train to split sp."""
        return sum(abs(need[sp][s] - k) - abs(need[sp][s]) for s, k in comp[c].items())

    by_stratum: dict[str, list[int]] = defaultdict(list)
    for c in order:
        for s in comp[c]:
            by_stratum[s].append(c)
    for sp in ("test", "val"):
        for s in sorted(need[sp]):
            while need[sp][s] > 0:
                cands = [c for c in by_stratum[s] if where[c] == "train"]
                if not cands:
                    break
                best = min(cands, key=lambda c: (cost(sp, c), len(members[c])))
                if cost(sp, best) >= 0:
                    break
                where[best] = sp
                for s2, k in comp[best].items():
                    need[sp][s2] -= k

    out = ["train"] * n
    for c, idx in members.items():
        for i in idx:
            out[i] = where[c]
    return out


def label_counts(
    labels: list[dict[str, str] | None], idx: list[int], fields: list[str]
) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter[str]] = {f: Counter() for f in fields}
    for i in idx:
        lab = labels[i]
        for f in fields:
            counts[f][lab.get(f, NO_LABEL) if lab else NO_LABEL] += 1
    return {f: dict(sorted(c.items())) for f, c in counts.items()}


def check_fractions(val: float, test: float) -> None:
    # Written so that NaN fails too: every comparison with NaN is false.
    if not (math.isfinite(val) and math.isfinite(test) and val >= 0 and test >= 0):
        raise UserError(f"--val {val} --test {test}: each must be a number >= 0")
    if not val + test < 1:
        raise UserError(f"--val {val} --test {test}: each must be >= 0 and together below 1")


def split_examples(
    examples: list[Example],
    *,
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    output_pattern: str | None = None,
    threshold: float = THRESHOLD,
) -> tuple[dict[str, list[Example]], dict[str, Any]]:
    """The three splits in memory and the manifest fields that describe them (no I/O)."""
    check_fractions(val, test)
    if not examples:
        raise UserError("no examples to split")
    fmt, labels = infer_labels([ex.target for ex in examples], output_pattern)
    strata = ["|".join(lab[f] for f in fmt.label_fields) if lab else NO_LABEL for lab in labels]
    by_call = not fmt.label_fields and any(ex.messages[-1].get("tool_calls") for ex in examples)
    if by_call:  # function calls: each split gets its share of every function (and of "no call")
        strata = [called_functions(ex) for ex in examples]
    clusters = near_duplicate_clusters([input_text(ex) for ex in examples], threshold=threshold)
    where = assign(strata, clusters, val=val, test=test, seed=seed)
    idx = {s: [i for i, w in enumerate(where) if w == s] for s in SPLITS}
    for s, frac in (("val", val), ("test", test)):
        if frac > 0 and not idx[s]:
            raise UserError(
                f"{len(examples)} examples are too few to hold out a {s} split of {frac:.0%}"
            )
    n_clusters = sum(1 for c, k in Counter(clusters).items() if k > 1)
    info = {
        "format": fmt.to_json(),
        "stratified": bool(fmt.label_fields) or by_call,
        "near_duplicate_clusters": n_clusters,
        "near_duplicate_threshold": threshold,
        "counts": {
            s: {"examples": len(idx[s]), "labels": label_counts(labels, idx[s], fmt.label_fields)}
            for s in SPLITS
        },
    }
    if by_call:
        info["stratified_by"] = "called function"
        for s in SPLITS:
            info["counts"][s]["functions"] = dict(Counter(strata[i] for i in idx[s]))
    return {s: [examples[i] for i in idx[s]] for s in SPLITS}, info


def called_functions(ex: Example) -> str:
    """The functions the answer calls, sorted and joined (``"(no call)"`` for a text answer)."""
    calls = ex.messages[-1].get("tool_calls") or []
    return "+".join(sorted(c["function"]["name"] for c in calls)) or "(no call)"


def split_file(
    path: str | Path,
    out_dir: str | Path,
    *,
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    project: str | None = None,
    output_pattern: str | None = None,
) -> dict[str, Any]:
    """Split ``path`` into ``out_dir/{train,val,test}.jsonl`` + ``manifest.json``; seal the test
    file.

    Everything is checked first: a file with any error is refused (a ``DataError`` naming the
    first ``file:line``), and so is an ``out_dir`` that holds other files, since it is replaced
    whole. Then the split is built beside ``out_dir`` and swapped in; see the module docstring.
    Returns the manifest.
    """
    path = Path(path)
    out_dir = Path(out_dir)
    if out_dir.is_symlink():  # swap the folder it points to, not the link
        out_dir = out_dir.resolve()
    check_fractions(val, test)
    check_output_dir(out_dir, SPLIT_FILES)
    if out_dir.resolve() in path.resolve().parents:
        raise UserError(f"{path}: is inside --out {out_dir}, which a split replaces whole")
    examples = load_examples(path)
    parts, info = split_examples(
        examples, val=val, test=test, seed=seed, output_pattern=output_pattern
    )
    info["source"] = {
        "path": str(path.resolve()),
        "sha256": sha256_file(path),
        "examples": len(examples),
    }
    info["params"] = {"val": val, "test": test, "seed": seed}
    try:
        with staging_dir(out_dir, reap=True) as stage:
            manifest = _write_split(stage, parts, info)
            swap_in(stage, out_dir, seal_as=(project or path.stem) if parts["test"] else None)
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot write the split: {exc.strerror or exc}") from None
    return manifest


def _write_split(
    stage: Path, parts: dict[str, list[Example]], info: dict[str, Any]
) -> dict[str, Any]:
    """The three split files and ``manifest.json`` in ``stage``; returns the manifest."""

    files: dict[str, dict[str, Any]] = {}
    for s in SPLITS:
        target = stage / f"{s}.jsonl"
        atomic_write_jsonl(target, (ex.to_json() for ex in parts[s]))
        files[s] = {"path": target.name, "sha256": sha256_file(target), **info["counts"][s]}
    manifest = {
        "source": info["source"],
        "params": info["params"],
        "format": info["format"],
        "stratified": info["stratified"],
        "near_duplicate_clusters": info["near_duplicate_clusters"],
        "near_duplicate_threshold": info["near_duplicate_threshold"],
    }
    return write_manifest(stage, manifest, files, has_test=bool(parts["test"]))


def write_manifest(
    stage: Path, fields: dict[str, Any], files: dict[str, Any], *, has_test: bool
) -> dict[str, Any]:
    """manifest.json in ``stage``: ``fields``, then the split files, counts and the test's seal."""
    manifest = {
        **fields,
        "splits": files,
        "counts": {s: files[s]["examples"] for s in SPLITS},
        "sealed_test": content_hash(stage / "test.jsonl")[0] if has_test else None,
    }
    atomic_write_json(stage / "manifest.json", manifest)
    return manifest


def swap_in(stage: Path, out_dir: Path, seal_as: str | None) -> None:
    """Move the finished ``stage`` to ``out_dir``, sealing its test file for project ``seal_as``.

    The seal is written before the move and committed after it
    (:func:`tunewise.data.seal.sealing`), so an unwritable home stops everything before the move,
    and a failed move records no seal.
    """
    if seal_as is None:
        replace_dir(stage, out_dir)
        return
    try:
        with sealing(stage / "test.jsonl", out_dir / "test.jsonl", seal_as):
            replace_dir(stage, out_dir)
    except UserError:
        if not stage.exists():  # moved, and then the seal failed to commit: take the split out
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
