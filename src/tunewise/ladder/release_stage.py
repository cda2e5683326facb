"""The ladder's release: decide the winner after the gate, build its release, register and
promote it, whatever kind it is (:mod:`tunewise.decide.release` is the rule).

A fine-tune winner is its training run, registered as before. A rung or classifier winner is
written as a release folder (:mod:`tunewise.baselines.release`) under
``.tunewise/releases/<kind>-<key>``, where the key hashes what the release depends on (the task,
the model, the retrieval settings, the training split): the same inputs give the same folder, so a
rerun finds the version already registered, and changed inputs give a new folder, which then
faces the production version as a challenger.

Before a release is registered it is evaluated again through the release itself (the code path
the server answers through) on the validation items, and must answer every item exactly as the
candidate the rule chose did. Generation is cached by prompt, so for the LLM rungs this costs the
retrieval only; a mismatch stops the ladder with the items that differ.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tunewise.baselines.classical_io import fit_for_release
from tunewise.baselines.release import CLASSIFIER_KINDS, LLM_KINDS, release_key, write_release
from tunewise.config import ProjectConfig
from tunewise.data.labels import LabelSpec
from tunewise.data.schema import load_examples
from tunewise.decide.release import RELEASE_FILE, ReleaseDecision, decide_release
from tunewise.errors import UserError
from tunewise.eval import harness
from tunewise.eval.results import COMPARISON_FILE, Comparison, EvalRun, Verdict
from tunewise.fsio import atomic_write_json, sha256_path
from tunewise.registry import lineage
from tunewise.runtime import models

RELEASES_DIR = "releases"
CHECK_NAME = "released"  # the candidate name of the release in its own check


def decide(cfg: ProjectConfig, eval_dir: Path, verdict_files: dict[str, str]) -> dict[str, Any]:
    """Apply the release rule to the evaluation in ``eval_dir``; save release-decision.json and,
    for a rung winner, its verdict file. Returns ``{"release": winner, "release_verdict": path}``.
    """
    comp = Comparison.load(eval_dir / COMPARISON_FILE)
    verdicts = {c: Verdict.load(p) for c, p in verdict_files.items()}
    decision = decide_release(comp, verdicts, cfg.gate)
    atomic_write_json(eval_dir / RELEASE_FILE, decision.to_dict())
    out: dict[str, Any] = {"release": decision.winner, "release_verdict": None}
    if decision.winner is None:
        return out
    if decision.winner in verdict_files:
        out["release_verdict"] = verdict_files[decision.winner]
    elif decision.verdict is not None:
        path = eval_dir / f"verdict-{decision.winner}.json"
        decision.verdict.save(path)
        out["release_verdict"] = str(path)
    return out


def load_decision(eval_dir: Path) -> ReleaseDecision | None:
    """The saved decision's winner and reasons (None when the gate stage wrote none)."""
    path = eval_dir / RELEASE_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text(encoding="utf-8"))
    verdict = Verdict.from_dict(raw["verdict"]) if raw.get("verdict") else None
    return ReleaseDecision(
        raw.get("winner"),
        verdict,
        raw.get("reasons", []),
        raw.get("order", []),
        raw.get("left_out", []),
    )


def release_data_hashes(cfg: ProjectConfig) -> dict[str, Any]:
    """What a release was built from: the data files (the split is a function of them and of
    ``data.split``, which the key holds) and the documents."""
    return {
        "train": sha256_path(cfg.data.train),
        "val": sha256_path(cfg.data.val),
        "test": sha256_path(cfg.data.test),
        "docs": sha256_path(cfg.data.docs),
    }


def release_folder(cfg: ProjectConfig, kind: str) -> Path:
    """Where the release of ``kind`` with the project's current inputs is built."""
    key = release_key(cfg, kind, release_data_hashes(cfg))
    return cfg.work_dir / RELEASES_DIR / f"{kind}-{key}"


def build(cfg: ProjectConfig, kind: str, eval_dir: Path) -> Path:
    """Write the release of ``kind`` and check it answers as evaluated; returns its folder."""
    folder = release_folder(cfg, kind)
    train = load_examples(cfg.work_dir / "splits" / "train.jsonl", cfg.task.tools)
    base = None
    fitted = None
    if kind in LLM_KINDS:
        ref = models.resolve(cfg.model.base)
        base = {"name": ref.name, "path": str(ref.path), "weight_hash": ref.weight_hash}
    elif kind in CLASSIFIER_KINDS:
        fitted = fit_for_release(kind, LabelSpec.from_config(cfg, train), train)
    run = EvalRun.load(eval_dir / "eval.json")
    evaluated = run.candidate(kind)
    write_release(
        folder,
        kind,
        cfg,
        train,
        base=base,
        max_new_tokens=evaluated.meta.get("max_new_tokens"),
        data_hashes=release_data_hashes(cfg),
        fitted=fitted,
    )
    _check_answers(cfg, folder, run, kind)
    # after the check, which must see the release as the registry will store it (without this)
    lineage.write_release_lineage(folder, lineage.of_release(cfg, kind))
    return folder


def _check_answers(cfg: ProjectConfig, folder: Path, run: EvalRun, kind: str) -> None:
    """The release, evaluated through itself on the same items, answers as ``kind`` did."""
    check_dir = folder.parent / f".check-{folder.name}"
    quiet = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"constrained": False})})
    try:
        again = harness.evaluate(
            quiet,
            split=run.split,
            candidates=[],
            finetuned={CHECK_NAME: folder},
            out_dir=check_dir,
            progress=False,
            limit=run.meta.get("limit"),
        )
    finally:
        shutil.rmtree(check_dir, ignore_errors=True)
    want = {it.item_id: it.output for it in run.candidate(kind).items}
    got = {it.item_id: it.output for it in again.candidate(CHECK_NAME).items}
    differ = [i for i in run.item_ids if want.get(i) != got.get(i)]
    if differ:
        shutil.rmtree(folder, ignore_errors=True)
        raise UserError(
            f"{folder}: the {kind} release answers {len(differ)} of {len(run.item_ids)} "
            f"validation items differently from the evaluated {kind} (first: item {differ[0]}: "
            f"{got.get(differ[0])!r} vs {want.get(differ[0])!r}); nothing was registered"
        )
