"""Champion/challenger and non-inferiority plumbing: which reference to evaluate, and the margin
tests that the pure rules in :mod:`tunewise.decisions` read off the comparison.

The flow, for ``tunewise run`` and ``tunewise gate``:

1. :func:`production_version`: the version the project's ``production`` alias points at, if any;
2. the harness evaluates it on the same items as the new runs, as the candidate ``production``
   (:data:`tunewise.decisions.CHAMPION`), unless it *is* one of them (same weights);
3. :func:`attach_margin_tests`: after ``compare``, the one-sided tests of every new candidate
   against the production version (``gate.regression_margin``) and against ``gate.reference``
   (``gate.margin``, non-inferiority mode), and ``meta["champion"]`` naming the version;
4. ``gate.decide`` reads them; the verdict records the champion check for ``registry promote``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunewise.config import GateConfig
from tunewise.decisions import CHAMPION
from tunewise.errors import UserError
from tunewise.eval.margin import margin_tests
from tunewise.eval.results import Comparison, EvalRun


def production_version(project_name: str, registry: Any | None = None) -> Any | None:
    """The registry version ``<project>@production`` points at, materialised; None when unset."""
    from tunewise.registry import DEFAULT_ALIAS, Registry

    reg = registry or Registry()
    try:
        aliases = {s["name"]: s["aliases"] for s in reg.summary()}
    except UserError:
        return None
    if DEFAULT_ALIAS not in aliases.get(project_name, {}):
        return None
    return reg.resolve(f"{project_name}@{DEFAULT_ALIAS}")


def weights_hash(files: dict[str, str]) -> str:
    """One string for the weight files of a version (same string, same model)."""
    return ",".join(f"{k}={v}" for k, v in sorted(files.items()) if k.endswith(".safetensors"))


def champion_runs(version: Any | None, new_runs: dict[str, Path]) -> dict[str, Path]:
    """``{"production": its folder}`` to evaluate beside ``new_runs``, or nothing.

    Nothing when there is no production version, or when it was registered from one of the new
    runs' own folders (the ladder re-run after it shipped): a model is not a regression of itself.
    """
    if version is None or version.path is None:
        return {}
    sources = {str(Path(p).resolve()) for p in new_runs.values()}
    if version.source_run in sources:
        return {}
    return {CHAMPION: Path(version.path)}


def attach_margin_tests(
    comp: Comparison,
    run: EvalRun,
    gate_cfg: GateConfig,
    candidates: Sequence[str],
    champion_version: str | None = None,
) -> Comparison:
    """Add the margin tests and ``meta["champion"]`` the decisions need (in place; returned)."""
    names = {c.name for c in run.candidates}
    alpha = gate_cfg.alpha
    tests = [
        t
        for t in comp.margin_tests
        if not (t.reference == CHAMPION or t.reference == gate_cfg.reference)
    ]
    if champion_version is not None:
        comp.meta["champion"] = {"candidate": CHAMPION, "version": champion_version}
        if CHAMPION in names:
            tests += margin_tests(run, candidates, CHAMPION, gate_cfg.regression_margin, alpha)
    if gate_cfg.mode == "non_inferiority" and gate_cfg.reference in names:
        tests += margin_tests(run, candidates, gate_cfg.reference, gate_cfg.margin, alpha)
    comp.margin_tests = tests
    return comp


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
    from tunewise.config import load_project
    from tunewise.eval.harness import evaluate

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
