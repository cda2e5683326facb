"""Champion/challenger and non-inferiority plumbing: which reference to evaluate, and the margin
tests that the pure rules in :mod:`tunewise.decide.decisions` read off the comparison.

The flow, for ``tunewise run`` and ``tunewise gate``:

1. :func:`production_version` (``tunewise gate``) or :func:`ladder_champion` (``tunewise run``):
   the version the project's ``production`` alias points at, if any;
2. the harness evaluates it on the same items as the new runs, as the candidate ``production``
   (:data:`tunewise.candidates.CHAMPION`), unless it was registered from one of them (then the
   ladder keeps the version that run was compared against when it shipped);
3. :func:`attach_margin_tests`: after ``compare``, the one-sided tests of every new candidate
   against the production version (``gate.regression_margin``) and against ``gate.reference``
   (``gate.margin``, non-inferiority mode), and ``meta["champion"]`` naming the version; beside
   them, for the record, the same champion test on the items new since the champion
   (:func:`new_items_tests`: in none of its data files, see
   :func:`tunewise.registry.lineage.new_items`), where served traffic usually lands and where an
   average over the old items can hide a change;
4. ``gate.decide`` reads them; the verdict records the champion check for ``registry promote``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tunewise.baselines.release import RELEASE_FILE
from tunewise.candidates import CHAMPION
from tunewise.config import GateConfig, load_project
from tunewise.errors import UserError
from tunewise.eval.harness import evaluate
from tunewise.eval.margin import margin_tests
from tunewise.eval.results import Comparison, EvalRun, Verdict
from tunewise.fsio import sha256_file
from tunewise.registry.lineage import item_key, new_items, of_items
from tunewise.registry.store import DEFAULT_ALIAS, Registry, same_payload, version_files


def production_version(
    project_name: str, registry: Any | None = None, *, materialise: bool = True
) -> Any | None:
    """The registry version ``<project>@production`` points at (its files materialised unless
    ``materialise`` is off); None when unset."""
    reg = registry or Registry()
    try:
        aliases = {s["name"]: s["aliases"] for s in reg.summary()}
    except UserError:
        return None
    if DEFAULT_ALIAS not in aliases.get(project_name, {}):
        return None
    spec = f"{project_name}@{DEFAULT_ALIAS}"
    return reg.resolve(spec) if materialise else reg.lookup(spec)


def weights_hash(files: dict[str, str]) -> str:
    """One string for the model files of a version (same string, same model): the weights of a
    training run, every file of a rung release (which has no weights, or only a classifier's)."""
    weights = [(k, v) for k, v in sorted(files.items()) if k.endswith(".safetensors")]
    if not weights or RELEASE_FILE in files:
        weights = sorted(files.items())
    return ",".join(f"{k}={v}" for k, v in weights)


def ladder_champion(project_name: str, new_runs: dict[str, Path], registry: Any) -> Any | None:
    """The version the ladder evaluates beside ``new_runs`` as the champion: its metadata, not
    materialised (a dry run only reads it); None when there is none.

    That is the production version, unless it was registered from one of ``new_runs`` (the ladder
    re-run after its own run shipped). Then it is the version that run was compared against when
    it shipped (its verdict's champion), so the evaluation's key stays what it was and the rerun
    is a no-op; none when it was compared against none, or against another of these runs.
    """
    try:
        aliases = {s["name"]: s["aliases"] for s in registry.summary()}
    except UserError:
        return None
    if DEFAULT_ALIAS not in aliases.get(project_name, {}):
        return None
    production = registry.lookup(f"{project_name}@{DEFAULT_ALIAS}")
    sources = {str(Path(p).resolve()) for p in new_runs.values()}
    if production.source_run not in sources:
        return production
    judged = production.verdict.champion if production.verdict is not None else None
    spec = judged.get("version") if isinstance(judged, dict) else None
    if not spec:
        return None
    try:
        earlier = registry.lookup(spec)
    except UserError:  # not in this registry (a verdict recorded elsewhere)
        return None
    return None if earlier.source_run in sources else earlier


def registered_as(registry: Any, name: str, run_dir: Path, verdict: Path) -> Any | None:
    """The version of ``name`` already registered from ``run_dir`` (a training run or a rung
    release) with the files it holds now and the same verdict, or None: registering it again
    would add a duplicate version."""
    if not registry.has_name(name):
        return None
    source = str(Path(run_dir).resolve())
    mine = [v for v in registry.versions(name) if v.source_run == source]
    if not mine:
        return None
    files = {k: sha256_file(p) for k, p in version_files(Path(run_dir)).items()}
    said = json.dumps(Verdict.load(verdict).to_dict(), sort_keys=True)
    for v in reversed(mine):  # the latest first
        same_verdict = v.verdict is not None and json.dumps(v.verdict.to_dict(), sort_keys=True)
        if same_payload(v.kind, v.files, files) and same_verdict == said:
            return v
    return None


def attach_margin_tests(
    comp: Comparison,
    run: EvalRun,
    gate_cfg: GateConfig,
    candidates: Sequence[str],
    champion_version: str | None = None,
    champion_candidate: str = CHAMPION,
) -> Comparison:
    """Add the margin tests and ``meta["champion"]`` the decisions need (in place; returned).

    ``champion_candidate`` is the candidate whose answers are the production version's: the
    evaluated ``production`` candidate, or the rung it was released from when this evaluation
    reproduces that release."""
    names = {c.name for c in run.candidates}
    alpha = gate_cfg.alpha
    previous = (comp.meta.get("champion") or {}).get("candidate", CHAMPION)
    tests = [
        t for t in comp.margin_tests if t.reference not in (CHAMPION, previous, gate_cfg.reference)
    ]
    if champion_version is not None:
        comp.meta["champion"] = {"candidate": champion_candidate, "version": champion_version}
        if champion_candidate in names:
            tests += margin_tests(
                run, candidates, champion_candidate, gate_cfg.regression_margin, alpha
            )
            on_new = new_items_tests(
                run, candidates, champion_candidate, champion_version, gate_cfg
            )
            if on_new is not None:  # not decisive: the gate reads the test on every item
                comp.meta["champion"]["new_items"] = on_new
    if gate_cfg.mode == "non_inferiority" and gate_cfg.reference in names:
        tests += margin_tests(run, candidates, gate_cfg.reference, gate_cfg.margin, alpha)
    comp.margin_tests = tests
    return comp


def new_items_tests(
    run: EvalRun,
    candidates: Sequence[str],
    champion_candidate: str,
    champion_version: str,
    gate_cfg: GateConfig,
    registry: Any | None = None,
) -> dict[str, Any] | None:
    """The champion test again, on this evaluation's items that are in none of the champion's
    data files: ``{"n", "of", "tests": {candidate: {metric, candidate_value, reference_value,
    diff, lower_bound, p_value, n}}}``. None when the champion recorded no lineage (pushed before
    it existed), so "no new items" is never a guess."""
    try:
        champion = (registry or Registry()).lookup(champion_version)
    except (UserError, OSError):  # not in this registry (a verdict recorded elsewhere)
        return None
    new = new_items(champion, of_items(run.split, run.item_ids))
    if new is None:
        return None
    ids = [i for i in run.item_ids if item_key(i) in new]
    keep = ("metric", "candidate_value", "reference_value", "diff", "lower_bound", "p_value", "n")
    tests: dict[str, Any] = {}
    if ids:  # margin_tests pairs scores by run.item_ids: the subset is the new items only
        subset, margin = replace(run, item_ids=ids), gate_cfg.regression_margin
        for t in margin_tests(subset, candidates, champion_candidate, margin, gate_cfg.alpha):
            tests[t.candidate] = {k: getattr(t, k) for k in keep}
    return {"n": len(ids), "of": len(run.item_ids), "tests": tests}


def ensure_champion(
    run: EvalRun, eval_dir: Path, candidate: str, project: Path | None, *, progress: bool = True
) -> tuple[EvalRun, str | None, str | None]:
    """(run, production version spec, note) for ``tunewise gate``: evaluate the production version
    on the same items when eval.json lacks it, and save eval.json with it.

    The spec is None when there is no production version or when ``candidate`` is that very
    version's training run. A note says why the version could not be evaluated (no project file
    to build its prompts from, or the sealed test split); the gate then refuses, because "not
    evaluated" is not "no regression".
    """
    version = production_version(run.project)
    if version is None:
        return run, None, None
    names = {c.name: c for c in run.candidates}
    gated = names.get(candidate)
    gated_dir = (gated.meta.get("run_dir") if gated else None) or ""
    if gated_dir and str(Path(gated_dir).resolve()) == version.source_run:
        return run, None, None  # gating the production version's own run: not a challenger
    have = names.get(CHAMPION)
    if have is not None and have.meta.get("run_dir") == str(version.path):
        return run, version.spec, None
    if project is None:
        return (
            run,
            version.spec,
            (
                f"{version.spec} is in production but eval.json does not hold it: pass --project "
                "so tunewise gate can evaluate it on the same items"
            ),
        )
    if run.split == "test":
        return (
            run,
            version.spec,
            (
                f"{version.spec} is in production, and evaluating it on the sealed test split "
                "would spend the split again: compare on validation"
            ),
        )
    cfg = load_project(project)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"constrained": False})})
    sub = evaluate(
        cfg,
        split=run.split,
        candidates=[],
        finetuned={CHAMPION: Path(version.path)},
        out_dir=eval_dir / "champion",
        limit=run.meta.get("limit"),
        progress=progress,
    )
    if sub.item_ids != run.item_ids:
        raise UserError(
            f"{eval_dir / 'eval.json'}: its items differ from the project's {run.split} split now "
            "(data re-split since?): rerun `tunewise eval` so both versions see the same items"
        )
    run.candidates = [c for c in run.candidates if c.name != CHAMPION] + [sub.candidate(CHAMPION)]
    run.save(eval_dir / "eval.json")
    return run, version.spec, None
