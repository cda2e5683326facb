"""The ladder: check -> split -> baselines -> train -> evaluate -> compare -> gate -> registry -> report.

Each stage is a function of files on disk. Its *key* is a hash of exactly the inputs that can
change its output (the config sections it reads, the content hashes of its input files, and the
keys of the stages upstream of it). ``ladder.json`` in the project's work directory records the
key and outputs of every finished stage, written atomically after each one, so:

* a rerun after success finds every key unchanged and does nothing (and says so);
* a change to the training config changes the training key, which changes the keys of the
  stages downstream of it, while check, split and the baselines stay cached;
* Ctrl-C in any stage leaves every earlier stage recorded and reusable; an interrupted training
  run resumes from its last checkpoint on the next run.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from tunewise import __version__
from tunewise.config import ProjectConfig, dump_project
from tunewise.errors import UserError
from tunewise.fsio import atomic_write_json, sha256_file, sha256_json
from tunewise.learning_curve import CURVE_FILE, FRACTIONS
from tunewise.seeds import seed_name

BASELINE_CANDIDATES = ["prompt", "fewshot", "rag"]


@dataclass
class StageResult:
    name: str
    status: str  # "ran" | "cached" | "skipped"
    seconds: float
    outputs: dict[str, Any]


@dataclass
class LadderResult:
    work_dir: Path
    stages: list[StageResult] = field(default_factory=list)
    verdict: dict[str, Any] | None = None
    eval_dir: Path | None = None

    @property
    def all_cached(self) -> bool:
        return all(s.status != "ran" for s in self.stages)


class Ladder:
    """Runs stages in order, skipping those whose key is unchanged."""

    def __init__(
        self, cfg: ProjectConfig, console: Console | None = None, quiet: bool = False
    ) -> None:
        self.cfg = cfg
        self.work = cfg.work_dir
        self.work.mkdir(parents=True, exist_ok=True)
        self.state_path = self.work / "ladder.json"
        self.console = console or Console(stderr=False, quiet=quiet)
        self.state: dict[str, Any] = self._load_state()
        self.result = LadderResult(work_dir=self.work)
        self.keys: dict[str, str] = {}

    def _load_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def stage(
        self,
        name: str,
        inputs: dict[str, Any],
        fn: Callable[[], dict[str, Any]],
        total: int,
        index: int,
    ) -> dict[str, Any]:
        key = sha256_json({"stage": name, "inputs": inputs, "tunewise": __version__})
        self.keys[name] = key
        prev = self.state.get(name)
        label = f"[{index}/{total}] {name}"
        if prev and prev.get("key") == key and all(Path(p).exists() for p in prev.get("paths", [])):
            self.console.print(f"[dim]✓ {label}: unchanged, cached[/]")
            self.result.stages.append(StageResult(name, "cached", 0.0, prev["outputs"]))
            return prev["outputs"]
        self.console.rule(f"[bold]{label}")
        started = time.time()
        try:
            outputs = fn()
        except KeyboardInterrupt:
            # Without this the user sees a bare exit and cannot tell what was kept.
            kept = [s.name for s in self.result.stages]
            self.console.print(
                f"\n[yellow]interrupted in {label}[/]; finished stages are kept"
                f"{' (' + ', '.join(kept) + ')' if kept else ''}: run the same command again to resume"
            )
            raise
        seconds = time.time() - started
        paths = [v for v in outputs.values() if isinstance(v, str) and v.startswith("/")]
        self.state[name] = {
            "key": key,
            "outputs": outputs,
            "paths": paths,
            "seconds": round(seconds, 2),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        # Recorded only after the stage finished: Ctrl-C inside it leaves the old record alone.
        atomic_write_json(self.state_path, self.state)
        self.console.print(f"[green]✓ {label}[/] in {seconds:.1f}s")
        self.result.stages.append(StageResult(name, "ran", seconds, outputs))
        return outputs


def _file_hash(path: Path | None) -> str | None:
    if path is None:
        return None
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return sha256_json([[str(p.relative_to(path)), sha256_file(p)] for p in files])
    return sha256_file(path) if path.is_file() else None


def run_ladder(
    cfg: ProjectConfig,
    *,
    methods: list[str] | None = None,
    final: bool = False,
    learning_curve: bool = False,
    console: Console | None = None,
    quiet: bool = False,
    seeds: int = 1,
) -> LadderResult:
    """Run the whole ladder for a project; see the module docstring for caching rules."""
    from tunewise.data.checks import check_file
    from tunewise.data.split import split_file

    methods = methods or [cfg.train.method]
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: expected 1 or more training seeds")
    for m in methods:
        if m not in ("lora", "qlora", "full"):
            raise UserError(f"--methods: unknown method {m!r} (expected lora, qlora or full)")
    ladder = Ladder(cfg, console=console, quiet=quiet)
    con = ladder.console
    work = ladder.work
    full_cfg = dump_project(cfg)
    total = 7 + len(methods) * seeds + int(final) + int(learning_curve)
    idx = iter(range(1, total + 1))
    train_hash = _file_hash(cfg.data.train)
    if train_hash is None:
        raise UserError(f"{cfg.data.train}: training data not found")

    # 1. data check: errors stop the ladder, warnings are shown and recorded.
    def do_check() -> dict[str, Any]:
        report = check_file(
            cfg.data.train,
            model=cfg.model.base,
            max_len=cfg.data.max_len,
            output_pattern=cfg.task.output_pattern,
        )
        out = work / "check.json"
        atomic_write_json(out, report.to_json())
        if report.errors:
            first = report.errors[0]
            raise UserError(
                f"{first} ({len(report.errors)} error(s); run `tunewise data check {cfg.data.train}`)"
            )
        con.print(f"{len(report.warnings)} warning(s); details in {out}")
        return {"report": str(out)}

    ladder.stage(
        "check",
        {
            "train": train_hash,
            "model": cfg.model.base,
            "max_len": cfg.data.max_len,
            "pattern": cfg.task.output_pattern,
        },
        do_check,
        total,
        next(idx),
    )

    # 2. split, with the test split sealed.
    splits = work / "splits"

    def do_split() -> dict[str, Any]:
        manifest = split_file(
            cfg.data.train,
            splits,
            val=cfg.data.split.val,
            test=cfg.data.split.test,
            seed=cfg.data.split.seed,
            project=cfg.name,
            output_pattern=cfg.task.output_pattern,
        )
        return {"manifest": str(splits / "manifest.json"), "counts": manifest.get("counts", {})}

    ladder.stage(
        "split",
        {"check": ladder.keys["check"], "split": full_cfg["data"]["split"], "project": cfg.name},
        do_split,
        total,
        next(idx),
    )

    eval_inputs = {
        "split": ladder.keys["split"],
        "task": full_cfg["task"],
        "model": full_cfg["model"],
        "eval": {k: v for k, v in full_cfg["eval"].items() if k != "candidates"},
        "docs": _file_hash(cfg.data.docs),
    }
    baselines = [c for c in cfg.eval.candidates if c in BASELINE_CANDIDATES]
    # The gate may hold the fine-tune to more than the three rungs (e.g. knn): test against those too.
    gate_bases = list(dict.fromkeys(baselines + cfg.gate.baselines))
    extra = [c for c in cfg.eval.candidates if c not in BASELINE_CANDIDATES and c != "finetuned"]
    reference = cfg.gate.reference if cfg.gate.mode == "non_inferiority" else None
    if reference and reference not in baselines + extra:
        extra.append(reference)  # non-inferiority is tested against it on the same items

    # 3. baselines on validation: the cheap rungs, measured before any training.
    def do_baselines() -> dict[str, Any]:
        from tunewise.eval.harness import evaluate

        out = work / "eval-baselines"
        evaluate(cfg, split="val", candidates=baselines + extra, out_dir=out, progress=not quiet)
        return {"eval": str(out / "eval.json")}

    ladder.stage(
        "baselines", eval_inputs | {"candidates": baselines + extra}, do_baselines, total, next(idx)
    )

    # 4. training, once per method (and per seed with --seeds N); an interrupted run resumes
    # from its last checkpoint.
    runs: dict[str, Path] = {}
    groups: dict[str, list[str]] = {}  # pooled candidate -> its seeds' candidates (--seeds N)
    train_stages: list[str] = []
    for method in methods:
        group = f"finetuned-{method}" if len(methods) > 1 else "finetuned"
        for k in range(seeds):
            seed = cfg.train.seed + k
            seed_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})
            train_inputs = {
                "split": ladder.keys["split"],
                "train": full_cfg["train"] | {"method": method, "seed": seed},
                "model": full_cfg["model"],
                "task": full_cfg["task"],
            }
            # One directory per training key: a changed config trains afresh beside the old run,
            # and an interrupted run with the same key resumes from its last checkpoint.
            run_dir = work / "runs" / f"{method}-{sha256_json(train_inputs)[:10]}"

            def do_train(
                method: str = method, run_dir: Path = run_dir, seed_cfg: ProjectConfig = seed_cfg
            ) -> dict[str, Any]:
                _train_or_resume(seed_cfg, run_dir, method, con, quiet=quiet)
                return {"run": str(run_dir / "run.json")}

            stage = f"train-{method}" if seeds == 1 else f"train-{method}-seed{seed}"
            ladder.stage(stage, train_inputs, do_train, total, next(idx))
            train_stages.append(stage)
            runs[group if seeds == 1 else seed_name(group, k)] = run_dir
        if seeds > 1:
            groups[group] = [seed_name(group, k) for k in range(seeds)]

    # 5. every candidate on the same validation items (baselines come back from the cache), and
    # the production version when the project has one: a new version must not regress from it.
    eval_dir = work / "eval"
    train_keys = [ladder.keys[stage] for stage in train_stages]
    from tunewise.champion import champion_runs, production_version, weights_hash

    champ_version = production_version(cfg.name)
    champ = champion_runs(champ_version, runs)
    champ_spec = champ_version.spec if champ and champ_version else None
    champ_key = {"champion": [champ_spec, weights_hash(champ_version.files)]} if champ_spec else {}

    def do_eval() -> dict[str, Any]:
        from tunewise.eval.harness import evaluate

        # A curve measured against an older evaluation would mislead the advisor.
        (eval_dir / CURVE_FILE).unlink(missing_ok=True)
        evaluate(
            cfg,
            split="val",
            candidates=baselines + extra,
            finetuned=runs | champ,
            out_dir=eval_dir,
            progress=not quiet,
        )
        _pool_seed_groups(eval_dir, groups)
        return {"eval": str(eval_dir / "eval.json")}

    eval_key = eval_inputs | {"train": train_keys} | champ_key
    ladder.stage("evaluate", eval_key, do_eval, total, next(idx))

    # 6. statistics and the gate, for every fine-tuned candidate; the best passing one ships.
    def do_gate() -> dict[str, Any]:
        gated = [*groups, *(r for r in runs if not any(r in m for m in groups.values()))]
        return _compare_and_gate(cfg, eval_dir, gated, gate_bases, champ_spec)

    gate_out = ladder.stage(
        "compare-gate",
        {"evaluate": ladder.keys["evaluate"], "gate": full_cfg["gate"]},
        do_gate,
        total,
        next(idx),
    )

    # 6b. the learning curve (opt-in): the first method again on 25% and 50% of train.
    curve_key = None
    if learning_curve:
        method = methods[0]
        full_name = f"finetuned-{method}" if len(methods) > 1 else "finetuned"

        def do_curve(method: str = method) -> dict[str, Any]:
            return _learning_curve(
                cfg,
                work,
                method,
                full_name,
                eval_dir,
                con,
                quiet=quiet,
                train_key=ladder.keys[f"train-{method}"],
            )

        ladder.stage(
            "learning-curve",
            {
                "evaluate": ladder.keys["evaluate"],
                "train": ladder.keys[f"train-{method}"],
                "fractions": list(FRACTIONS),
            },
            do_curve,
            total,
            next(idx),
        )
        curve_key = ladder.keys["learning-curve"]

    # 7. registry: every trained run is versioned; a "ship" verdict promotes it to production.
    def do_registry() -> dict[str, Any]:
        from tunewise.registry import Registry

        reg = Registry()
        added: dict[str, Any] = {}
        # a group of seeds is registered as its first seed's run (the configured train.seed),
        # under the group's verdict: the gate held the worst seed to the same bar
        registered = {g: runs[m[0]] for g, m in groups.items()} | {
            r: d for r, d in runs.items() if not any(r in m for m in groups.values())
        }
        for cand, run_dir in registered.items():
            version = reg.add(
                run_dir, name=cfg.name, verdict=Path(gate_out["verdicts"][cand]), eval_dir=eval_dir
            )
            added[cand] = f"{version.name}:{version.version}"
        shipped = gate_out.get("ship")
        promoted = None
        if shipped:
            name, version = added[shipped].split(":")
            reg.promote(name, int(version), alias="production")
            promoted = added[shipped]
        record = work / "registry.json"
        atomic_write_json(record, {"versions": added, "promoted": promoted})
        return {"record": str(record), "versions": added, "promoted": promoted}

    ladder.stage("registry", {"gate": ladder.keys["compare-gate"]}, do_registry, total, next(idx))

    # 8. report.
    def do_report() -> dict[str, Any]:
        from tunewise.eval.report import render

        html, md = render(eval_dir, train_runs=list(runs.values()))
        return {"html": str(html), "md": str(md)}

    ladder.stage(
        "report",
        {
            "gate": ladder.keys["compare-gate"],
            "registry": ladder.keys["registry"],
            "curve": curve_key,
        },
        do_report,
        total,
        next(idx),
    )

    # 9. the one sealed test evaluation, only when asked.
    if final:

        def do_final() -> dict[str, Any]:
            from tunewise.eval.harness import evaluate

            out = work / "eval-test"
            shipped = gate_out.get("ship")
            members = groups.get(shipped, [shipped])
            chosen = {k: v for k, v in runs.items() if k in members} or runs
            evaluate(
                cfg,
                split="test",
                candidates=gate_bases,
                finetuned=chosen,
                final=True,
                out_dir=out,
                progress=not quiet,
            )
            _pool_seed_groups(out, {g: m for g, m in groups.items() if set(m) <= set(chosen)})
            gated = [g for g, m in groups.items() if set(m) <= set(chosen)] or list(chosen)
            test_gate = _compare_and_gate(cfg, out, gated, gate_bases)
            return {"eval": str(out / "eval.json"), "ship": test_gate.get("ship")}

        ladder.stage(
            "final-test", {"gate": ladder.keys["compare-gate"]}, do_final, total, next(idx)
        )

    ladder.result.eval_dir = eval_dir
    shipped = gate_out.get("ship")
    verdict_file = gate_out["verdicts"].get(shipped) if shipped else gate_out.get("best_verdict")
    if verdict_file:
        ladder.result.verdict = json.loads(Path(verdict_file).read_text())
    if ladder.result.all_cached:
        con.print("[bold]Nothing to do:[/] every stage is up to date.")
    return ladder.result


def _pool_seed_groups(eval_dir: Path, groups: dict[str, list[str]]) -> None:
    """Add each group's pooled candidate to eval.json and record the groups (--seeds N)."""
    if not groups:
        return
    from tunewise.eval.results import EvalRun
    from tunewise.seeds import pool_seeds

    run = EvalRun.load(eval_dir / "eval.json")
    run.candidates = [c for c in run.candidates if c.name not in groups]
    run.candidates += [pool_seeds(run, g, m) for g, m in groups.items()]
    run.meta["seed_groups"] = groups
    run.save(eval_dir / "eval.json")


def _compare_and_gate(
    cfg: ProjectConfig,
    eval_dir: Path,
    finetuned: list[str],
    baselines: list[str],
    champion: str | None = None,
) -> dict[str, Any]:
    """comparison.json (with the pairs between rungs, for the advisor, and the margin tests against
    the production version ``champion`` and ``gate.reference``) and one verdict per fine-tune."""
    from tunewise.champion import attach_margin_tests
    from tunewise.eval.calibration import attach_judge_agreement
    from tunewise.eval.results import EvalRun
    from tunewise.eval.stats import compare, save_comparison
    from tunewise.gate import decide, save_verdict

    run = EvalRun.load(eval_dir / "eval.json")
    comp = compare(run, baselines=baselines, alpha=cfg.gate.alpha)
    # The advisor also needs each rung against the ones below it (few-shot vs prompt, RAG vs both).
    seen = {(p.candidate, p.baseline, p.metric) for p in comp.pairs}
    for lower in ("prompt", "fewshot"):
        if lower not in baselines:
            continue
        for p in compare(run, baselines=[lower], alpha=cfg.gate.alpha).pairs:
            if (p.candidate, p.baseline, p.metric) not in seen:
                comp.pairs.append(p)
                seen.add((p.candidate, p.baseline, p.metric))
    comp.meta.update({"alpha": cfg.gate.alpha, "delta": cfg.gate.delta})
    attach_margin_tests(comp, run, cfg.gate, finetuned, champion)
    comp.meta["seed_groups"] = run.meta.get("seed_groups", {})
    attach_judge_agreement(comp, run, eval_dir)
    save_comparison(comp, eval_dir / "comparison.json")
    verdicts: dict[str, str] = {}
    passing: list[tuple[float, str]] = []
    best: tuple[float, str] | None = None
    pm = comp.primary_metric
    for cand in finetuned:
        verdict = decide(comp, cand, cfg.gate)
        path = eval_dir / f"verdict-{cand}.json"
        save_verdict(verdict, path, cfg.gate)
        verdicts[cand] = str(path)
        score = comp.metrics.get(cand, {}).get(pm)
        value = score.value if score is not None else float("-inf")
        if best is None or value > best[0]:
            best = (value, cand)
        if verdict.ship:
            passing.append((value, cand))
    ship = max(passing)[1] if passing else None
    chosen = ship or (best[1] if best else None)
    if chosen:
        # verdict.json is the decision of record: the shipped candidate, or the best one that failed.
        atomic_write_json(eval_dir / "verdict.json", json.loads(Path(verdicts[chosen]).read_text()))
    return {
        "comparison": str(eval_dir / "comparison.json"),
        "verdicts": verdicts,
        "ship": ship,
        "best_verdict": verdicts.get(chosen) if chosen else None,
    }


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
    """Train into ``run_dir``, resuming from its last checkpoint when an earlier attempt left one."""
    from tunewise.train.trainer import last_checkpoint, train

    resume = (run_dir / "run.json").is_file() and last_checkpoint(run_dir) is not None
    if resume:
        con.print(f"resuming {method} from its last checkpoint in {run_dir}")
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


def _learning_curve(
    cfg: ProjectConfig,
    work: Path,
    method: str,
    full_name: str,
    eval_dir: Path,
    con: Console,
    *,
    quiet: bool,
    train_key: str,
) -> dict[str, Any]:
    """Train ``method`` on nested 25%/50% subsets, evaluate them on val, write the curve."""
    from tunewise.data.schema import load_examples
    from tunewise.eval.harness import evaluate
    from tunewise.eval.results import EvalRun
    from tunewise.eval.stats import compare
    from tunewise.learning_curve import save_curve, stratified_order, subset_sizes, write_subset

    splits = work / "splits"
    train_path, val_path = splits / "train.jsonl", splits / "val.jsonl"
    examples = load_examples(train_path)
    order = stratified_order(
        examples, seed=cfg.data.split.seed, output_pattern=cfg.task.output_pattern
    )
    lc = work / "learning-curve"
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
        con.print(f"learning curve: {method} on {n} of {len(examples)} training examples")
        _train_or_resume(
            sub_cfg, run_dir, method, con, quiet=quiet, train_path=subset, val_path=val_path
        )
        runs[f"{full_name}@{n}"] = run_dir
        sizes[f"{full_name}@{n}"] = n
    full = EvalRun.load(eval_dir / "eval.json")
    pm = full.primary_metric
    alone = replace(
        full, candidates=[full.candidate(full_name)]
    )  # its CI only, not every candidate's
    points = [(len(examples), _metric(compare(alone, baselines=[]), full_name, pm))]
    if runs:
        # free generation only: the curve is read on the primary metric of the generated answers
        gen_cfg = cfg.model_copy(
            update={"eval": cfg.eval.model_copy(update={"constrained": False})}
        )
        sub = evaluate(
            gen_cfg,
            split="val",
            candidates=[],
            finetuned=runs,
            out_dir=lc / "eval",
            progress=not quiet,
        )
        comp = compare(sub, baselines=[])
        points += [(sizes[name], _metric(comp, name, pm)) for name in runs]
    out = eval_dir / CURVE_FILE
    save_curve(
        out,
        points,
        {
            "metric": pm,
            "method": method,
            "split": "val",
            "runs": {str(sizes[k]): str(v) for k, v in runs.items()},
        },
    )
    con.print(
        "learning curve (" + pm + "): " + ", ".join(f"{n}: {v:.3f}" for n, v in sorted(points))
    )
    return {"curve": str(out), "points": sorted(points)}


def _metric(comp: Any, candidate: str, metric: str) -> float:
    score = comp.metrics.get(candidate, {}).get(metric)
    if score is None:
        raise UserError(f"learning curve: no {metric} for {candidate} in the evaluation")
    return float(score.value)
