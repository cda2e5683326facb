"""Your own validation and test files: used as given, checked against train, the test sealed.

Benchmarks come with official splits (CLINC150's train/val/test, Banking77's train/test), and a
team's holdout is fixed on purpose. When ``data.val`` / ``data.test`` (or ``data split
--val-file/--test-file``) name such files, tunewise does **not** re-split them:

* A given file is copied byte for byte into the split folder, so its content hash (and hence its
  seal, :mod:`tunewise.data.seal`) is the same as the user's original: evaluating on the original
  while tuning is refused just like evaluating on the copy.
* A split that is not given is carved from train as :mod:`tunewise.data.split` does (stratified,
  near-duplicate clusters kept whole), so "my own test file, a 10% validation split from train"
  works too.
* Every file is parsed with the same validation as ``data check`` (any error refuses the split),
  and the per-file warnings of :func:`tunewise.data.checks.check_examples` are recorded.
* **Leakage**: a held-out example whose input also appears in an earlier split (train before val
  before test) is counted, exactly (identical input text) or nearly (MinHash/LSH near-duplicates,
  :mod:`tunewise.data.dedup`). The files are the user's, so tunewise warns with counts and lines
  rather than moving examples: its score there measures memory, not generalisation.
* **Labels**: a label value in val/test that train never shows cannot be learned; one in train
  that val/test never shows cannot be measured. Both are warnings, as are held-out answers that
  break train's output format.

The manifest records each source file's path and sha256 beside the usual split hashes and counts.
Writing is all or nothing, through the same staging folder and sealed swap as ``data split``.

:func:`split_project` is the one entry point for a project's config: it carves everything with
:func:`tunewise.data.split.split_file` when no file is given, and calls :func:`split_with_files`
when one is. It lives here, above both, so that :mod:`tunewise.data.split` never needs this module.
"""

from __future__ import annotations

import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunewise.data.checks import Finding, check_examples
from tunewise.data.dedup import THRESHOLD, near_duplicate_clusters
from tunewise.data.files import check_output_dir
from tunewise.data.formats import OutputFormat, infer_labels
from tunewise.data.schema import Example, input_text, load_examples
from tunewise.data.seal import is_sealed
from tunewise.data.split import (
    SPLIT_FILES,
    SPLITS,
    check_fractions,
    label_counts,
    split_examples,
    split_file,
    swap_in,
    write_manifest,
)
from tunewise.errors import UserError
from tunewise.fsio import atomic_write_jsonl, sha256_file, staging_dir

if TYPE_CHECKING:
    from tunewise.config import ProjectConfig

GIVEN = ("val", "test")
LINES_KEPT = 50  # matching line pairs kept per leakage finding (the counts are complete)


def leakage(parts: dict[str, list[Example]], *, threshold: float = THRESHOLD) -> list[Finding]:
    """One ``leakage`` finding per (earlier, later) split pair where later examples repeat inputs.

    Splits are ordered train, val, test; an example of a later split is *exact* when its input
    text (every turn before the answer except the system prompt, stripped) equals one in the
    earlier split, and *near* when it is not exact but shares a near-duplicate cluster with one.
    ``lines`` are the later split's line numbers; ``details`` holds both counts and the first
    :data:`LINES_KEPT` ``(line, matching line)`` pairs.
    """
    order = [s for s in SPLITS if parts.get(s)]
    texts = [input_text(ex).strip() for s in order for ex in parts[s]]
    owner = [s for s in order for _ in parts[s]]
    lines = [ex.line for s in order for ex in parts[s]]
    clusters = near_duplicate_clusters(texts, threshold=threshold)
    first_by_text: dict[tuple[str, str], int] = {}
    first_by_cluster: dict[tuple[str, int], int] = {}
    for i, (s, t, c) in enumerate(zip(owner, texts, clusters, strict=True)):
        first_by_text.setdefault((s, t), i)
        first_by_cluster.setdefault((s, c), i)
    out: list[Finding] = []
    for a_pos, earlier in enumerate(order):
        for later in order[a_pos + 1 :]:
            exact: list[tuple[int, int]] = []
            near: list[tuple[int, int]] = []
            for i in (k for k, s in enumerate(owner) if s == later):
                if (j := first_by_text.get((earlier, texts[i]))) is not None:
                    exact.append((lines[i], lines[j]))
                elif (j := first_by_cluster.get((earlier, clusters[i]))) is not None:
                    near.append((lines[i], lines[j]))
            if exact or near:
                out.append(_leak_finding(earlier, later, len(parts[later]), exact, near, threshold))
    return out


def _leak_finding(
    earlier: str,
    later: str,
    n_later: int,
    exact: list[tuple[int, int]],
    near: list[tuple[int, int]],
    threshold: float,
) -> Finding:
    return Finding(
        "leakage",
        f"{later} vs {earlier}: {len(exact) + len(near)} of {n_later} {later} example(s) repeat "
        f"a {earlier} input ({len(exact)} exactly, {len(near)} as near-duplicates, Jaccard >= "
        f"{threshold:g}); scores on them measure memory, not generalisation",
        sorted(ln for ln, _ in exact + near),
        {
            "earlier": earlier,
            "later": later,
            "exact": len(exact),
            "near": len(near),
            "exact_lines": [list(p) for p in exact[:LINES_KEPT]],
            "near_lines": [list(p) for p in near[:LINES_KEPT]],
        },
    )


def label_findings(
    fmt: OutputFormat, parts: dict[str, list[Example]], given: list[str]
) -> list[Finding]:
    """Held-out labels unseen in train, train labels absent from a given file, off-format answers.

    ``fmt`` is train's inferred (or configured) output format; only the ``given`` splits are
    looked at, since a carved split is stratified from train by construction.
    """
    out: list[Finding] = []
    if fmt.kind == "text":
        return out
    train_values = {
        f: {lab[f] for ex in parts["train"] if (lab := fmt.label_of(ex.target)) and f in lab}
        for f in fmt.label_fields
    }
    for s in given:
        examples = parts[s]
        off = [ex.line for ex in examples if fmt.parse(ex.target) is None]
        if off:
            out.append(
                Finding(
                    "format",
                    f"{len(off)} of {len(examples)} {s} answers break train's format "
                    f"{fmt.pattern!r}",
                    off,
                    {"split": s, "pattern": fmt.pattern},
                )
            )
        for f in fmt.label_fields:
            out += _label_gaps(s, f, examples, fmt, train_values[f])
    return out


def _label_gaps(
    split: str, fld: str, examples: list[Example], fmt: OutputFormat, train_values: set[str]
) -> list[Finding]:
    seen: Counter[str] = Counter()
    lines: dict[str, list[int]] = defaultdict(list)
    for ex in examples:
        lab = fmt.label_of(ex.target)
        if lab and fld in lab:
            seen[lab[fld]] += 1
            lines[lab[fld]].append(ex.line)
    out: list[Finding] = []
    unseen = {v: c for v, c in seen.items() if v not in train_values}
    if unseen:
        shown = ", ".join(f"{v!r} ({c})" for v, c in sorted(unseen.items())[:8])
        more = f" (+{len(unseen) - 8} more)" if len(unseen) > 8 else ""
        out.append(
            Finding(
                "unseen_label",
                f"{sum(unseen.values())} {split} example(s) carry {len(unseen)} value(s) of "
                f"{fld!r} that train never shows: {shown}{more}; the model cannot learn them",
                sorted(ln for v in unseen for ln in lines[v]),
                {"split": split, "field": fld, "values": dict(sorted(unseen.items()))},
            )
        )
    absent = sorted(train_values - set(seen))
    if absent:
        shown = ", ".join(map(repr, absent[:8])) + (
            f" (+{len(absent) - 8} more)" if len(absent) > 8 else ""
        )
        out.append(
            Finding(
                "absent_label",
                f"{len(absent)} value(s) of {fld!r} in train never appear in {split}: {shown}; "
                f"{split} says nothing about them",
                [],
                {"split": split, "field": fld, "values": absent},
            )
        )
    return out


def _check_sources(train: Path, given: dict[str, Path], out_dir: Path) -> None:
    """Distinct regular files, none inside ``out_dir`` (which is replaced whole)."""
    named = {"train": train, **given}
    seen: dict[str, str] = {}
    for s, path in named.items():
        if out_dir.resolve() in path.resolve().parents:
            raise UserError(f"{path}: is inside --out {out_dir}, which a split replaces whole")
        if path.is_file():
            digest = sha256_file(path)
            if digest in seen:
                raise UserError(
                    f"{path}: the {s} file has the same content as the {seen[digest]} file; "
                    f"give a different file for each split"
                )
            seen[digest] = s
    if "val" in given and given["val"].is_file() and is_sealed(given["val"]):
        raise UserError(
            f"{given['val']}: is a sealed test split; a validation file is looked at while "
            f"tuning, so it cannot be one"
        )


def _load(path: Path, split: str) -> list[Example]:
    examples = load_examples(path)  # a DataError naming file:line on any invalid record
    if not examples:
        raise UserError(f"{path}: the {split} file holds no examples")
    return examples


def split_with_files(
    train: str | Path,
    out_dir: str | Path,
    *,
    val_file: str | Path | None = None,
    test_file: str | Path | None = None,
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    project: str | None = None,
    output_pattern: str | None = None,
    threshold: float = THRESHOLD,
) -> dict[str, Any]:
    """``out_dir/{train,val,test}.jsonl`` + ``manifest.json`` from train and the given files.

    A split whose file is given is copied as it is; one that is not is carved from train with
    its fraction (``val`` / ``test``). The test file is sealed for ``project``. Returns the
    manifest, whose ``warnings`` list leakage, label and per-file check findings.
    """
    train = Path(train)
    out_dir = Path(out_dir)
    if out_dir.is_symlink():  # swap the folder it points to, not the link
        out_dir = out_dir.resolve()
    given = {s: Path(p) for s, p in (("val", val_file), ("test", test_file)) if p is not None}
    if not given:
        raise UserError("no validation or test file given: use `data split` fractions instead")
    check_fractions(0.0 if "val" in given else val, 0.0 if "test" in given else test)
    check_output_dir(out_dir, SPLIT_FILES)
    _check_sources(train, given, out_dir)
    train_examples = _load(train, "train")
    held = {s: _load(p, s) for s, p in given.items()}
    carve = {s: (0.0 if s in given else frac) for s, frac in (("val", val), ("test", test))}
    fmt, _ = infer_labels([ex.target for ex in train_examples], output_pattern)
    carved: dict[str, Any] = {"stratified": False, "near_duplicate_clusters": None}
    if any(carve.values()):
        parts, carved = split_examples(
            train_examples, **carve, seed=seed, output_pattern=output_pattern, threshold=threshold
        )
    else:
        parts = {"train": train_examples, "val": [], "test": []}
    parts.update(held)
    warnings = leakage(parts, threshold=threshold) + label_findings(fmt, parts, list(given))
    checks = {
        s: [w.to_json() for w in check_examples(held[s], path=str(given[s])).warnings]
        for s in given
    }
    sources = {
        s: {"path": str(p.resolve()), "sha256": sha256_file(p), "examples": len(parts[s])}
        for s, p in {"train": train, **given}.items()
    }
    info = {
        "given": sorted(given, key=GIVEN.index),
        "sources": sources,
        "format": fmt,
        "params": {**carve, "seed": seed, "threshold": threshold},
        "warnings": [w.to_json() for w in warnings],
        "checks": checks,
        "stratified": carved["stratified"],
        "near_duplicate_clusters": carved["near_duplicate_clusters"],
    }
    copies = {s: given[s] for s in given}
    if not any(carve.values()):
        copies["train"] = train  # nothing carved: train is used as it is too
    try:
        with staging_dir(out_dir, reap=True) as stage:
            manifest = _write(stage, parts, copies, info)
            swap_in(stage, out_dir, seal_as=(project or train.stem) if parts["test"] else None)
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot write the split: {exc.strerror or exc}") from None
    return manifest


def _write(
    stage: Path, parts: dict[str, list[Example]], copies: dict[str, Path], info: dict[str, Any]
) -> dict[str, Any]:
    """The three files (given ones copied byte for byte) and ``manifest.json`` in ``stage``."""

    fmt: OutputFormat = info["format"]
    files: dict[str, dict[str, Any]] = {}
    for s in SPLITS:
        target = stage / f"{s}.jsonl"
        if s in copies:
            shutil.copyfile(copies[s], target)  # content only: a read-only source's mode stays
        else:
            atomic_write_jsonl(target, (ex.to_json() for ex in parts[s]))
        labels = [fmt.label_of(ex.target) for ex in parts[s]]
        files[s] = {
            "path": target.name,
            "sha256": sha256_file(target),
            "examples": len(parts[s]),
            "labels": label_counts(labels, list(range(len(labels))), fmt.label_fields),
        }
    manifest = {
        "given": info["given"],
        "source": info["sources"]["train"],
        "sources": info["sources"],
        "params": info["params"],
        "format": fmt.to_json(),
        "stratified": info["stratified"],
        "near_duplicate_clusters": info["near_duplicate_clusters"],
        "near_duplicate_threshold": info["params"]["threshold"],
        "leakage": {
            f"{w['details']['later']}_vs_{w['details']['earlier']}": {
                "exact": w["details"]["exact"],
                "near": w["details"]["near"],
            }
            for w in info["warnings"]
            if w["kind"] == "leakage"
        },
        "warnings": info["warnings"],
        "checks": info["checks"],
    }
    return write_manifest(stage, manifest, files, has_test=bool(parts["test"]))


def split_project(cfg: ProjectConfig, out_dir: str | Path) -> dict[str, Any]:
    """The project's splits in ``out_dir``: ``data.val``/``data.test`` as given, the rest carved.

    Without either file this is :func:`tunewise.data.split.split_file` on ``data.train`` with
    ``data.split``'s fractions; with them, :func:`split_with_files`.
    """
    data, fractions = cfg.data, cfg.data.split
    common = {
        "val": fractions.val,
        "test": fractions.test,
        "seed": fractions.seed,
        "project": cfg.name,
        "output_pattern": cfg.task.output_pattern,
    }
    if data.val is None and data.test is None:
        return split_file(data.train, out_dir, **common)
    return split_with_files(data.train, out_dir, val_file=data.val, test_file=data.test, **common)
