"""The ladder: check, split, baselines, train, evaluate, compare, gate, registry, report.

Each stage is a function of files on disk. Its *key* is a hash of exactly the inputs that can
change its output (the config sections it reads, the content hashes of its input files, and the
keys of the stages upstream of it). ``ladder.json`` in the project's work directory records the
key and outputs of every finished stage, written atomically after each one, so:

* a rerun after success finds every key unchanged and does nothing (and says so);
* a change to the training config changes the training key, which changes the keys of the
  stages downstream of it, while check, split and the baselines stay cached;
* Ctrl-C (or SIGTERM, see :mod:`tunewise.ladder.interrupt`) in any stage leaves every earlier stage
  recorded and reusable; an interrupted training run resumes from its last checkpoint on the next
  run. The unfinished attempt's wall time is recorded beside the stage, so the run that finishes
  it (often fast: the generation cache holds the attempt's answers) does not hide the cost.

:func:`run_ladder` writes the ladder as a list of :class:`~tunewise.ladder.stages.Stage` rows (name,
inputs, run, the stages it reads from) and :meth:`~tunewise.ladder.stages.Ladder.run` walks it in
order: the list owns the numbering shown to the user, and each stage's key is derived from its
row. It is a straight line, not a scheduler: a stage may only read from stages listed before it.

This module writes the rows; what each stage does lives beside it, one module a kind of work:
:mod:`~tunewise.ladder.data_stages` (check, split), :mod:`~tunewise.ladder.train_stages` (training,
the learning curve), :mod:`~tunewise.ladder.eval_stages` (evaluations, the gate, the report),
:mod:`~tunewise.ladder.registry_stages` (the champion, the registry stage), all reading one
:class:`~tunewise.ladder.plan.LadderPlan`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from tunewise import tracking
from tunewise.baselines.context import training_key_inputs
from tunewise.candidates import CHAMPION, run_names
from tunewise.config import ProjectConfig, dump_project
from tunewise.decide.seeds import seed_name
from tunewise.errors import UserError
from tunewise.eval.learning_curve import FRACTIONS
from tunewise.eval.results import Verdict
from tunewise.fsio import sha256_json, sha256_path
from tunewise.ladder import (
    dryrun,  # a module: tests replace dryrun.show_plan
    release_stage,
)
from tunewise.ladder.data_stages import check_data as _check
from tunewise.ladder.data_stages import split_data as _split
from tunewise.ladder.eval_stages import compare_and_gate, final_test, write_report
from tunewise.ladder.eval_stages import evaluate_baselines as _evaluate_baselines
from tunewise.ladder.eval_stages import evaluate_candidates as _evaluate
from tunewise.ladder.plan import LadderPlan, data_files, gated
from tunewise.ladder.registry_stages import find_champion, released_here, still_registered
from tunewise.ladder.registry_stages import register as _register
from tunewise.ladder.stages import Ladder, LadderResult, Outputs, Stage
from tunewise.ladder.train_stages import measure_learning_curve
from tunewise.ladder.train_stages import train_or_resume as _train_or_resume
from tunewise.rundir import RunDir, one_writer
from tunewise.train.methods import METHODS

# Stage bodies a test replaces on this module (`workflow._train_or_resume = ...`) keep their old
# private names here: _check, _split, _evaluate_baselines, _train_or_resume, _evaluate, _register.
# A row calls its body through this module's name when it runs, so the replacement takes effect.


def run_ladder(
    cfg: ProjectConfig,
    *,
    methods: list[str] | None = None,
    final: bool = False,
    learning_curve: bool = False,
    console: Console | None = None,
    quiet: bool = False,
    seeds: int = 1,
    dry_run: bool = False,
) -> LadderResult:
    """Run the whole ladder for a project; see the module docstring for caching rules.

    ``seeds`` > 1 trains each method with that many seeds and gates them as a group
    (:mod:`tunewise.decide.seeds`). ``dry_run`` prints the stages and their estimated cost
    (:mod:`tunewise.ladder.dryrun`) and runs and writes nothing.

    A ladder holds the project's work folder lock (:func:`tunewise.rundir.one_writer`) from its
    first read of ladder.json to its last write: two ladders on one project would train into
    the same run directories and overwrite each other's stages; the second is refused.
    """
    if dry_run:
        return _ladder(cfg, methods, final, learning_curve, console, quiet, seeds, dry_run=True)
    work = cfg.work_dir
    with one_writer(
        work,
        lambda holder: (
            f"{work}: another `tunewise run` is working on this project ({holder}); "
            "wait for it to end"
        ),
    ):
        return _ladder(cfg, methods, final, learning_curve, console, quiet, seeds, dry_run=False)


def _ladder(
    cfg: ProjectConfig,
    methods: list[str] | None,
    final: bool,
    learning_curve: bool,
    console: Console | None,
    quiet: bool,
    seeds: int,
    *,
    dry_run: bool,
) -> LadderResult:
    """:func:`run_ladder`'s work, the lock aside."""
    methods = _checked_methods(methods or [cfg.train.method], seeds)
    train_hash = sha256_path(cfg.data.train)
    if train_hash is None:
        raise UserError(f"{cfg.data.train}: training data not found")
    ladder = Ladder(cfg, console=console, quiet=quiet)
    full_cfg = dump_project(cfg)
    plan = LadderPlan.of(cfg, ladder.console, quiet)
    check, split = _check_and_split(plan, full_cfg, train_hash)
    eval_inputs = {
        "task": full_cfg["task"],
        "model": full_cfg["model"],
        "eval": {k: v for k, v in full_cfg["eval"].items() if k != "candidates"},
        "docs": sha256_path(cfg.data.docs),
    }
    baseline_eval = Stage(
        "baselines",
        eval_inputs | {"candidates": plan.listed},
        lambda up: _evaluate_baselines(plan),
        after=(split,),
    )
    variants = cfg.train.variants or [cfg.train.context]
    trains, names = _train_stages(plan, full_cfg, split, methods, variants, seeds)
    # The production version, when the project has one: a new version must not regress from it.
    champion_inputs, champion_spec = find_champion(plan, dry_run=dry_run)
    evaluate = Stage(
        "evaluate",
        eval_inputs | champion_inputs | {"candidates": plan.listed},
        lambda up: _evaluate(plan),
        after=(split, *trains),
    )
    gate = _gate_stage(plan, full_cfg, evaluate, champion_spec)
    # Opt-in: the first method (its first context variant) again on 25% and 50% of train.
    first = methods[0], variants[0]
    curve = [_curve_stage(plan, trains[0], first, names[first], evaluate)] if learning_curve else []
    registry = Stage(
        "registry",
        {},
        lambda up: _register(plan, up[gate]),
        after=(gate,),
        holds=lambda out: still_registered(plan, out),
    )
    # The one sealed test evaluation: when asked, or when an earlier --final left it up to date
    # (then it comes back from the cache, and the test split is not spent again).
    test = Stage(
        "final-test",
        {"candidates": plan.listed},
        lambda up: final_test(plan, up[gate]),
        after=(gate,),
    )
    sealed = [test] if final or ladder.reusable(test) else []
    # The report comes last, so that it covers the sealed test split as well as validation.
    report = Stage(
        "report",
        {},
        lambda up: write_report(plan, up.get(test)),
        after=(gate, registry, *curve, *sealed),
    )
    stages = [check, split, baseline_eval, *trains, evaluate, gate, *curve, registry, *sealed]
    stages += [report, *_mlflow_stage(plan, gate, report)]
    if dry_run:
        return _dry_run(ladder, stages, runs=plan.train_contexts, champion=champion_spec)
    outputs = ladder.run(stages)
    return _result(ladder, plan, outputs[gate], outputs.get(test))


def _check_and_split(
    plan: LadderPlan, full_cfg: dict[str, Any], train_hash: str
) -> tuple[Stage, Stage]:
    """The first two rows: the data check (keyed by every data file's content) and the split."""
    cfg = plan.cfg
    check_inputs = {
        "train": train_hash,
        **{k: sha256_path(v) for k, v in data_files(cfg).items() if k != "train"},
        "model": cfg.model.base,
        "max_len": cfg.data.max_len,
        "pattern": cfg.task.output_pattern,
    }
    check = Stage("check", check_inputs, lambda up: _check(plan))
    split = Stage(
        "split",
        {"split": full_cfg["data"]["split"], "project": cfg.name},
        lambda up: _split(plan),
        after=(check,),
    )
    return check, split


def _gate_stage(
    plan: LadderPlan, full_cfg: dict[str, Any], evaluate: Stage, champion_spec: str | None
) -> Stage:
    """Compare every candidate on the evaluated items and apply the gate (and the champion)."""

    def gate_and_release(up: dict[Stage, Outputs]) -> Outputs:
        champion = (champion_spec, CHAMPION) if champion_spec else released_here(plan)
        out = compare_and_gate(plan.cfg, plan.eval_dir, gated(plan), plan.gate_bases, *champion)
        # the release rule: the cheapest candidate nothing dearer clearly beats, any kind
        return out | release_stage.decide(plan.cfg, plan.eval_dir, out["verdicts"])

    return Stage("compare-gate", {"gate": full_cfg["gate"]}, gate_and_release, after=(evaluate,))


def _dry_run(
    ladder: Ladder, stages: list[Stage], *, runs: dict[str, str], champion: str | None
) -> LadderResult:
    """``--dry-run``: the stage plan with what is cached and what the rest will cost; runs and
    writes nothing."""
    cached = [ladder.reusable(s) for s in stages]
    notes = (
        [f"champion: {champion} (production) is evaluated beside the new runs"] if champion else []
    )
    dryrun.show_plan(ladder.cfg, stages, cached, ladder.console, runs=runs, notes=notes)
    return ladder.result


def _checked_methods(methods: list[str], seeds: int) -> list[str]:
    """``--methods`` and ``--seeds`` as given, or a one-line error naming the flag."""
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: expected 1 or more training seeds")
    for m in methods:
        if m not in METHODS:
            raise UserError(f"--methods: unknown method {m!r} (expected lora, qlora or full)")
    return methods


def _train_stages(
    plan: LadderPlan,
    full_cfg: dict[str, Any],
    split: Stage,
    methods: list[str],
    variants: list[str],
    seeds: int,
) -> tuple[list[Stage], dict[tuple[str, str], str]]:
    """One training row per method, context variant and seed; fills ``plan.runs`` (and
    ``plan.groups`` with several seeds). Returns the rows and each (method, variant)'s name."""
    # The fine-tuned candidates' names: "finetuned", or one per method, "+fewshot" per variant.
    names = run_names(methods, variants)
    trains = []
    for m in methods:
        for v in variants:
            name = names[m, v]
            for k in range(seeds):
                seed = k if seeds > 1 else None
                stage, run_dir = _train_stage(plan, full_cfg, m, split, seed, context=v)
                plan.runs[name if seeds == 1 else seed_name(name, k)] = run_dir
                plan.train_contexts[stage.name] = v
                trains.append(stage)
            if seeds > 1:
                plan.groups[name] = [seed_name(name, k) for k in range(seeds)]
    return trains, names


def _train_stage(
    plan: LadderPlan,
    full_cfg: dict[str, Any],
    method: str,
    split: Stage,
    k: int | None = None,
    *,
    context: str = "none",
) -> tuple[Stage, Path]:
    """Training for one method and context variant (the k-th extra seed with --seeds), and its
    run directory; an interrupted run resumes."""
    seed = plan.cfg.train.seed + (k or 0)
    train_cfg = plan.cfg.train.model_copy(update={"seed": seed, "context": context})
    cfg = plan.cfg.model_copy(update={"train": train_cfg})
    docs = sha256_path(cfg.data.docs) if context == "rag" else None
    given = training_key_inputs(full_cfg, context, docs_hash=docs)
    inputs = {
        **given,
        "train": given["train"] | {"method": method, "seed": seed},
        "model": full_cfg["model"],
        "task": full_cfg["task"],
    }
    # One directory per training key: a changed config trains afresh beside the old run, and an
    # interrupted run with the same key resumes from its last checkpoint.
    kind = method if context == "none" else f"{method}-{context}"
    run_dir = plan.work / "runs" / f"{kind}-{sha256_json(inputs | {'split': split.key})[:10]}"

    def train_it(upstream: dict[Stage, Outputs]) -> Outputs:
        _train_or_resume(cfg, run_dir, method, plan.con, quiet=plan.quiet)
        return {"run": str(RunDir(run_dir).run_json)}

    name = f"train-{method}" + ("" if context == "none" else f"+{context}")
    name += "" if k is None else f"-seed{seed}"
    return Stage(name, inputs, train_it, after=(split,)), run_dir


def _mlflow_stage(plan: LadderPlan, gate: Stage, report: Stage) -> list[Stage]:
    """MLflow (optional): the ladder's results and the registry mirror, after the report."""
    target = tracking.target_of(plan.cfg)
    if target is None:
        return []

    def log(up: dict[Stage, Outputs]) -> Outputs:
        return tracking.ladder_stage(
            plan.cfg, plan.eval_dir, gate=up[gate], report=up[report], runs=plan.runs
        )

    inputs = {"target": [target.uri, target.experiment]}
    return [Stage("mlflow", inputs, log, after=(gate, report))]  # `log` reads both


def _curve_stage(
    plan: LadderPlan, train: Stage, first: tuple[str, str], full_name: str, evaluate: Stage
) -> Stage:
    """The learning curve: ``first`` (method, context variant) retrained on subsets of train,
    beside the full run."""
    method, context = first

    def measure(upstream: dict[Stage, Outputs]) -> Outputs:
        return measure_learning_curve(plan, method, full_name, train_key=train.key, context=context)

    return Stage("learning-curve", {"fractions": list(FRACTIONS)}, measure, after=(evaluate, train))


def _result(
    ladder: Ladder, plan: LadderPlan, gate_out: Outputs, test_out: Outputs | None
) -> LadderResult:
    ladder.result.eval_dir = plan.eval_dir
    if test_out:
        ladder.result.test_dir = Path(test_out["eval"]).parent
    shipped = gate_out.get("ship")
    verdict_file = gate_out["verdicts"].get(shipped) if shipped else gate_out.get("best_verdict")
    if verdict_file:
        ladder.result.verdict = Verdict.load(verdict_file).to_dict()
    if ladder.result.all_cached:
        plan.con.print("[bold]Nothing to do:[/] every stage is up to date.")
    return ladder.result
