"""What the ladder reads from and writes to the registry: the production version to hold a new
one to (the champion), and the registry stage that versions the runs and promotes the release."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunewise import paths
from tunewise.baselines.release import RELEASE_KINDS
from tunewise.candidates import CHAMPION
from tunewise.decide.champion import (
    ladder_champion,
    production_version,
    registered_as,
    weights_hash,
)
from tunewise.errors import UserError
from tunewise.eval.results import EvalRun
from tunewise.fsio import atomic_write_json
from tunewise.ladder import release_stage
from tunewise.ladder.plan import LadderPlan, gated
from tunewise.ladder.stages import Outputs
from tunewise.registry.store import Registry


def find_champion(plan: LadderPlan, *, dry_run: bool) -> tuple[dict[str, Any], str | None]:
    """Record the champion to evaluate (:func:`tunewise.decide.champion.ladder_champion`): the
    inputs it adds to the evaluation's key, and its registry spec ("name:3"). A dry run only
    reads the registry's index (no folder created, no file materialised or hashed)."""
    if dry_run:
        root = paths.registry_dir(create=False)
        if not root.is_dir():
            return {}, None
        reg = Registry(root, snapshot=True)
    else:
        reg = Registry()
    # A version released from this project's current rung releases is this ladder's own result
    releases = {k: release_stage.release_folder(plan.cfg, k) for k in RELEASE_KINDS}
    version = ladder_champion(plan.cfg.name, plan.runs | releases, reg)
    if version is None:
        return {}, None
    if not dry_run:
        plan.champion[CHAMPION] = Path(reg.resolve(version.spec).path)
    return {"champion": [version.spec, weights_hash(version.files)]}, version.spec


def released_here(plan: LadderPlan) -> tuple[str | None, str]:
    """(production's spec, the candidate it came from) when production is this very
    evaluation's candidate (a rung release whose folder is the current one, or one of these
    training runs): the champion check then reads that candidate's answers, production's own."""
    version = production_version(plan.cfg.name, Registry(), materialise=False)
    if version is None:
        return None, CHAMPION
    names = {c.name for c in EvalRun.load(plan.eval_dir / "eval.json").candidates}
    sources = {k: release_stage.release_folder(plan.cfg, k) for k in RELEASE_KINDS} | plan.runs
    for name, folder in sources.items():
        if name in names and version.source_run == str(Path(folder).resolve()):
            return version.spec, name
    return None, CHAMPION


def still_registered(plan: LadderPlan, outputs: Outputs) -> bool:
    """Whether the versions a registry stage recorded are still in the registry, as this
    project's: the registry lives in $TUNEWISE_HOME, outside the project, so a wiped home or the
    project on another machine would otherwise say "cached" over an empty registry. Reads only
    (a dry run asks too)."""
    specs = list((outputs.get("versions") or {}).values())
    root = paths.registry_dir(create=False)
    if not root.is_dir():
        return not specs
    try:
        found = [Registry(root, snapshot=True).lookup(spec) for spec in specs]
    except UserError:  # gone, renumbered, or an unreadable index: the stage runs and says why
        return False
    work = plan.work.resolve()
    return all(v.source_run and Path(v.source_run).resolve().is_relative_to(work) for v in found)


def register(plan: LadderPlan, gate_out: Outputs) -> Outputs:
    """Every trained run is versioned once; the release rule's winner, whatever its kind, is
    versioned too and promoted to production."""
    reg = Registry()
    added: dict[str, Any] = {}
    # A group of seeds is registered once, as its first seed's run (the configured train.seed),
    # under the group's verdict: the gate held its worst seed to the same bar.
    registered = {g: plan.runs[m[0]] for g, m in plan.groups.items()}
    registered |= {r: plan.runs[r] for r in gated(plan) if r not in plan.groups}
    for cand, run_dir in registered.items():
        verdict = Path(gate_out["verdicts"][cand])
        # The same weights under the same verdict are the same version (a rerun of this stage).
        version = registered_as(reg, plan.cfg.name, run_dir, verdict) or reg.add(
            run_dir, name=plan.cfg.name, verdict=verdict, eval_dir=plan.eval_dir
        )
        added[cand] = f"{version.name}:{version.version}"
    winner = gate_out.get("release")
    promoted = None
    if winner and winner not in added:  # a rung or a classifier: its release folder
        folder = release_stage.build(plan.cfg, winner, plan.eval_dir)
        verdict = Path(gate_out["release_verdict"])
        version = registered_as(reg, plan.cfg.name, folder, verdict) or reg.add(
            folder, name=plan.cfg.name, verdict=verdict, eval_dir=plan.eval_dir
        )
        added[winner] = f"{version.name}:{version.version}"
    if winner:
        name, version = added[winner].split(":")
        reg.promote(name, int(version), alias="production")
        promoted = added[winner]
    record = plan.work / "registry.json"
    atomic_write_json(record, {"versions": added, "promoted": promoted, "release": winner})
    return {"record": str(record), "versions": added, "promoted": promoted}
