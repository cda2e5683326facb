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
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from tunewise import paths, tracking
from tunewise.baselines.context import training_key_inputs
from tunewise.baselines.release import RELEASE_KINDS
from tunewise.candidates import (
    CHAMPION,
    listed_untrained,
    run_names,
)
from tunewise.config import ProjectConfig, dump_project
from tunewise.data.checks import check_file
from tunewise.data.own_splits import split_project
from tunewise.data.schema import load_examples
from tunewise.decide import comparison
from tunewise.decide.champion import (
    ladder_champion,
    production_version,
    registered_as,
    weights_hash,
)
from tunewise.decide.report_inputs import render_report
from tunewise.decide.seeds import pool_seeds, seed_name
from tunewise.errors import UserError
from tunewise.eval import harness  # a module: `evaluate` names a stage here
from tunewise.eval.learning_curve import (
    CURVE_FILE,
    FRACTIONS,
    save_curve,
    stratified_order,
    subset_sizes,
    write_subset,
)
from tunewise.eval.results import EvalRun, Verdict
from tunewise.eval.stats import compare
from tunewise.fsio import atomic_write_json, sha256_json, sha256_path
from tunewise.ladder import (
    dryrun,  # a module: tests replace dryrun.show_plan
    release_stage,
)
from tunewise.ladder.stages import Ladder, LadderResult, Outputs, Stage
from tunewise.registry.store import Registry
from tunewise.rundir import RunDir, one_writer
from tunewise.train import record as train_record  # a module: tests replace last_checkpoint
from tunewise.train.methods import METHODS


def _file_hash(path: Path | None) -> str | None:
    return sha256_path(path)


@dataclass(frozen=True)
class _Plan:
    """What the stages of one ladder share: config, work directory, candidates, runs."""

    cfg: ProjectConfig
    con: Console
    quiet: bool
    baselines: list[str]  # the rungs among eval.candidates
    extra: list[str]  # other non-fine-tuned candidates (knn, ...)
    gate_bases: list[str]  # what the gate holds the fine-tune to
    runs: dict[str, Path]  # fine-tuned candidate -> run directory (filled in by run_ladder)
    groups: dict[str, list[str]] = field(default_factory=dict)  # --seeds N: pooled -> seeds
    champion: dict[str, Path] = field(default_factory=dict)  # the production version, if any
    train_contexts: dict[str, str] = field(default_factory=dict)  # training stage -> its context

    @classmethod
    def of(cls, cfg: ProjectConfig, con: Console, quiet: bool) -> _Plan:
        # fine-tuned names are the runs the ladder trains, evaluated once they exist
        baselines, extra = listed_untrained(cfg.eval.candidates)
        reference = cfg.gate.reference if cfg.gate.mode == "non_inferiority" else None
        if reference and reference not in baselines + extra:
            extra.append(reference)  # non-inferiority is tested against it on the same items
        return cls(
            cfg,
            con,
            quiet,
            baselines=baselines,
            extra=extra,
            # The gate may hold the fine-tune to more than the rungs (e.g. knn): test those too.
            gate_bases=list(dict.fromkeys(baselines + cfg.gate.baselines)),
            runs={},
        )

    @property
    def listed(self) -> list[str]:
        """What eval.candidates lists besides the fine-tunes: every split evaluates exactly these
        (with the split's fine-tunes), so validation and the sealed test score the same rungs."""
        return self.baselines + self.extra

    @property
    def work(self) -> Path:
        return self.cfg.work_dir

    @property
    def eval_dir(self) -> Path:
        return self.work / "eval"


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
    train_hash = _file_hash(cfg.data.train)
    if train_hash is None:
        raise UserError(f"{cfg.data.train}: training data not found")
    ladder = Ladder(cfg, console=console, quiet=quiet)
    full_cfg = dump_project(cfg)
    plan = _Plan.of(cfg, ladder.console, quiet)
    check, split = _check_and_split(plan, full_cfg, train_hash)
    eval_inputs = {
        "task": full_cfg["task"],
        "model": full_cfg["model"],
        "eval": {k: v for k, v in full_cfg["eval"].items() if k != "candidates"},
        "docs": _file_hash(cfg.data.docs),
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
    champion_inputs, champion_spec = _find_champion(plan, dry_run=dry_run)
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
    registry = Stage("registry", {}, lambda up: _register(plan, up[gate]), after=(gate,))
    # The one sealed test evaluation: when asked, or when an earlier --final left it up to date
    # (then it comes back from the cache, and the test split is not spent again).
    test = Stage(
        "final-test",
        {"candidates": plan.listed},
        lambda up: _final_test(plan, up[gate]),
        after=(gate,),
    )
    sealed = [test] if final or ladder.reusable(test) else []
    # The report comes last, so that it covers the sealed test split as well as validation.
    report = Stage(
        "report",
        {},
        lambda up: _report(plan, up.get(test)),
        after=(gate, registry, *curve, *sealed),
    )
    stages = [check, split, baseline_eval, *trains, evaluate, gate, *curve, registry, *sealed]
    stages += [report, *_mlflow_stage(plan, gate, report)]
    if dry_run:
        return _dry_run(ladder, stages, runs=plan.train_contexts, champion=champion_spec)
    outputs = ladder.run(stages)
    return _result(ladder, plan, outputs[gate], outputs.get(test))


def _check_and_split(plan: _Plan, full_cfg: dict[str, Any], train_hash: str) -> tuple[Stage, Stage]:
    """The first two rows: the data check (keyed by every data file's content) and the split."""
    cfg = plan.cfg
    check_inputs = {
        "train": train_hash,
        **{k: _file_hash(v) for k, v in _data_files(cfg).items() if k != "train"},
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
    plan: _Plan, full_cfg: dict[str, Any], evaluate: Stage, champion_spec: str | None
) -> Stage:
    """Compare every candidate on the evaluated items and apply the gate (and the champion)."""

    def gate_and_release(up: dict[Stage, Outputs]) -> Outputs:
        champion = (champion_spec, CHAMPION) if champion_spec else _released_here(plan)
        out = _compare_and_gate(plan.cfg, plan.eval_dir, _gated(plan), plan.gate_bases, *champion)
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
    plan: _Plan,
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


def _mlflow_stage(plan: _Plan, gate: Stage, report: Stage) -> list[Stage]:
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


# --- what each stage does -------------------------------------------------------------------------


def _data_files(cfg: ProjectConfig) -> dict[str, Path]:
    """``train``, and ``val`` / ``test`` when the project names its own files."""
    given = {"val": cfg.data.val, "test": cfg.data.test}
    return {"train": cfg.data.train, **{k: v for k, v in given.items() if v is not None}}


def _check(plan: _Plan) -> Outputs:
    """Data check (train, and your own val/test files): errors stop the ladder, warnings are
    shown and recorded."""
    cfg = plan.cfg
    outputs: Outputs = {}
    for name, path in _data_files(cfg).items():
        report = check_file(
            path,
            model=cfg.model.base,
            max_len=cfg.data.max_len,
            output_pattern=cfg.task.output_pattern,
            tools=cfg.task.tools,
        )
        out = plan.work / ("check.json" if name == "train" else f"check-{name}.json")
        atomic_write_json(out, report.to_json())
        if report.errors:
            first = report.errors[0]
            raise UserError(
                f"{first} ({len(report.errors)} error(s); run `tunewise data check {path}`)"
            )
        plan.con.print(f"{name}: {len(report.warnings)} warning(s); details in {out}")
        outputs["report" if name == "train" else f"report_{name}"] = str(out)
    return outputs


def _split(plan: _Plan) -> Outputs:
    """Train / validation / test, with the test split sealed."""
    splits = plan.work / "splits"
    manifest = split_project(plan.cfg, splits)  # data.val / data.test are used as given
    for w in manifest.get("warnings", []):  # leakage and label gaps of your own files
        plan.con.print(f"[yellow]{w['kind']}[/]: {escape(w['message'])}", soft_wrap=True)
    return {"manifest": str(splits / "manifest.json"), "counts": manifest.get("counts", {})}


def _evaluate_baselines(plan: _Plan) -> Outputs:
    """The cheap rungs on validation, measured before any training."""
    out = plan.work / "eval-baselines"
    harness.evaluate(
        plan.cfg,
        split="val",
        candidates=plan.listed,
        out_dir=out,
        progress=not plan.quiet,
    )
    return {"eval": str(out / "eval.json")}


def _train_stage(
    plan: _Plan,
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
    docs = _file_hash(cfg.data.docs) if context == "rag" else None
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


def _find_champion(plan: _Plan, *, dry_run: bool) -> tuple[dict[str, Any], str | None]:
    """Record the champion to evaluate (:func:`tunewise.decide.champion.ladder_champion`): the
    inputs it
    adds to the evaluation's key, and its registry spec ("name:3"). A dry run only reads the
    registry's index (no folder created, no file materialised or hashed)."""
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


def _gated(plan: _Plan) -> list[str]:
    """The candidates the gate decides on: each group of seeds as one, and every other run."""
    seeded = {m for members in plan.groups.values() for m in members}
    return [*plan.groups, *(r for r in plan.runs if r not in seeded)]


def _evaluate(plan: _Plan) -> Outputs:
    """Every candidate on the same validation items (the baselines come back from the cache)."""
    # A curve measured against an older evaluation would mislead the advisor.
    (plan.eval_dir / CURVE_FILE).unlink(missing_ok=True)
    harness.evaluate(
        plan.cfg,
        split="val",
        candidates=plan.listed,
        finetuned=plan.runs | plan.champion,
        out_dir=plan.eval_dir,
        progress=not plan.quiet,
    )
    _pool_seed_groups(plan.eval_dir, plan.groups)
    return {"eval": str(plan.eval_dir / "eval.json")}


def _pool_seed_groups(eval_dir: Path, groups: dict[str, list[str]]) -> None:
    """Add each group's pooled candidate to eval.json and record the groups (--seeds N)."""
    if not groups:
        return
    run = EvalRun.load(eval_dir / "eval.json")
    run.candidates = [c for c in run.candidates if c.name not in groups]
    run.candidates += [pool_seeds(run, g, m) for g, m in groups.items()]
    run.meta["seed_groups"] = groups
    run.save(eval_dir / "eval.json")


def _curve_stage(
    plan: _Plan, train: Stage, first: tuple[str, str], full_name: str, evaluate: Stage
) -> Stage:
    """The learning curve: ``first`` (method, context variant) retrained on subsets of train,
    beside the full run."""
    method, context = first

    def measure(upstream: dict[Stage, Outputs]) -> Outputs:
        return _learning_curve(plan, method, full_name, train_key=train.key, context=context)

    return Stage("learning-curve", {"fractions": list(FRACTIONS)}, measure, after=(evaluate, train))


def _register(plan: _Plan, gate_out: Outputs) -> Outputs:
    """Every trained run is versioned once; the release rule's winner, whatever its kind, is
    versioned too and promoted to production."""
    reg = Registry()
    added: dict[str, Any] = {}
    # A group of seeds is registered once, as its first seed's run (the configured train.seed),
    # under the group's verdict: the gate held its worst seed to the same bar.
    registered = {g: plan.runs[m[0]] for g, m in plan.groups.items()}
    registered |= {r: plan.runs[r] for r in _gated(plan) if r not in plan.groups}
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


def _report(plan: _Plan, test_out: Outputs | None) -> Outputs:
    """The report on validation; with the sealed test split beside it after ``--final``."""
    test_dir = Path(test_out["eval"]).parent if test_out else None
    html, md = render_report(plan.eval_dir, list(plan.runs.values()), test_dir)
    return {"html": str(html), "md": str(md)}


def _final_test(plan: _Plan, gate_out: Outputs) -> Outputs:
    """The sealed test split, once: the shipped fine-tune (else every one) and exactly the
    candidates eval.candidates lists, as on validation (no constrained variant it does not list).
    """
    out = plan.work / "eval-test"
    shipped = gate_out.get("ship")
    members = plan.groups.get(shipped, [shipped])
    chosen = {k: v for k, v in plan.runs.items() if k in members} or plan.runs
    groups = {g: m for g, m in plan.groups.items() if set(m) <= set(chosen)}
    harness.evaluate(
        plan.cfg,
        split="test",
        candidates=plan.listed,
        finetuned=chosen,
        final=True,
        out_dir=out,
        progress=not plan.quiet,
    )
    _pool_seed_groups(out, groups)
    seeded = {m for members in groups.values() for m in members}
    gated = [*groups, *(c for c in chosen if c not in seeded)]
    test_gate = _compare_and_gate(plan.cfg, out, gated, plan.gate_bases)
    return {"eval": str(out / "eval.json"), "ship": test_gate.get("ship")}


def _result(
    ladder: Ladder, plan: _Plan, gate_out: Outputs, test_out: Outputs | None
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


def _released_here(plan: _Plan) -> tuple[str | None, str]:
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


def _compare_and_gate(
    cfg: ProjectConfig,
    eval_dir: Path,
    finetuned: list[str],
    baselines: list[str],
    champion: str | None = None,
    champion_candidate: str = CHAMPION,
) -> dict[str, Any]:
    """comparison.json (:func:`tunewise.decide.comparison.build`) and a verdict per fine-tune."""
    run = EvalRun.load(eval_dir / "eval.json")
    comp = comparison.build(
        run,
        eval_dir,
        cfg.gate,
        gated=finetuned,
        baselines=baselines,
        champion=champion,
        champion_candidate=champion_candidate,
    )
    return comparison.gate_all(comp, eval_dir, cfg.gate, finetuned)


def _train_or_resume(
    cfg: ProjectConfig,
    run_dir: Path,
    method: str,
    con: Console,
    *,
    quiet: bool,
    train_path: Path | None = None,
    val_path: Path | None = None,
) -> None:
    """Train into ``run_dir``; resume from its last checkpoint when an earlier attempt left one."""
    from tunewise.train.trainer import train  # lazy: torch and transformers, ~3 s to import

    rd = RunDir(run_dir)
    status = rd.effective_status()
    resume = rd.has_record() and train_record.last_checkpoint(run_dir) is not None
    if resume:
        why = "interrupted run" if status == "interrupted" else "earlier attempt"
        con.print(
            f"resuming {method} ({why}) from its last checkpoint in {run_dir} "
            f"(as `{rd.resume_command()}` would)"
        )
    elif run_dir.exists():
        shutil.rmtree(run_dir)  # a start that died before its first checkpoint
    train(
        cfg,
        run_dir=run_dir,
        method=method,
        resume=resume,
        progress=not quiet,
        train_path=train_path,
        val_path=val_path,
    )


def _train_subsets(
    plan: _Plan, method: str, full_name: str, train_key: str, context: str = "none"
) -> tuple[dict[str, Path], dict[str, int], int]:
    """``method`` trained on nested, label-stratified subsets of train (25%, 50%).

    Returns the runs by candidate name (``finetuned@N``), their sizes, and the size of train.
    """
    cfg = plan.cfg.model_copy(
        update={"train": plan.cfg.train.model_copy(update={"context": context})}
    )
    train_path = plan.work / "splits" / "train.jsonl"
    examples = load_examples(train_path, plan.cfg.task.tools)
    order = stratified_order(
        examples, seed=cfg.data.split.seed, output_pattern=cfg.task.output_pattern
    )
    lc = plan.work / "learning-curve"
    key = train_key[:10]  # the full run's key: split, train config, model and task
    runs: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    for n in subset_sizes(len(examples)):
        subset = write_subset(train_path, lc / f"train-{n}.jsonl", n, order)
        run_dir = lc / f"{method}-{n}-{key}"
        sub_cfg = cfg
        if cfg.train.max_steps:  # same epochs as the full run, not the same steps
            steps = max(1, round(cfg.train.max_steps * n / len(examples)))
            sub_cfg = cfg.model_copy(
                update={"train": cfg.train.model_copy(update={"max_steps": steps})}
            )
        plan.con.print(f"learning curve: {method} on {n} of {len(examples)} training examples")
        _train_or_resume(
            sub_cfg,
            run_dir,
            method,
            plan.con,
            quiet=plan.quiet,
            train_path=subset,
            val_path=plan.work / "splits" / "val.jsonl",
        )
        runs[f"{full_name}@{n}"] = run_dir
        sizes[f"{full_name}@{n}"] = n
    return runs, sizes, len(examples)


def _learning_curve(
    plan: _Plan, method: str, full_name: str, train_key: str, context: str = "none"
) -> Outputs:
    """Train ``method`` on nested 25%/50% subsets, evaluate them on val, write the curve."""
    cfg = plan.cfg
    runs, sizes, n_train = _train_subsets(plan, method, full_name, train_key, context)
    full = EvalRun.load(plan.eval_dir / "eval.json")
    pm = full.primary_metric
    # The full run's point is the ladder's own fine-tune; its CI only, not every candidate's.
    alone = replace(full, candidates=[full.candidate(full_name)])
    points = [(n_train, _metric(compare(alone, baselines=[]), full_name, pm))]
    if runs:
        # free generation only: the curve is read on the primary metric of the generated answers
        gen_cfg = cfg.model_copy(
            update={"eval": cfg.eval.model_copy(update={"constrained": False})}
        )
        sub = harness.evaluate(
            gen_cfg,
            split="val",
            candidates=[],
            finetuned=runs,
            out_dir=plan.work / "learning-curve" / "eval",
            progress=not plan.quiet,
        )
        comp = compare(sub, baselines=[])
        points += [(sizes[name], _metric(comp, name, pm)) for name in runs]
    out = plan.eval_dir / CURVE_FILE
    meta = {
        "metric": pm,
        "method": method,
        "split": "val",
        "runs": {str(sizes[k]): str(v) for k, v in runs.items()},
    }
    save_curve(out, points, meta)
    shown = ", ".join(f"{n}: {v:.3f}" for n, v in sorted(points))
    plan.con.print(f"learning curve ({pm}): {shown}")
    return {"curve": str(out), "points": sorted(points)}


def _metric(comp: Any, candidate: str, metric: str) -> float:
    score = comp.metrics.get(candidate, {}).get(metric)
    if score is None:
        raise UserError(f"learning curve: no {metric} for {candidate} in the evaluation")
    return float(score.value)
