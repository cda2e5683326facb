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
