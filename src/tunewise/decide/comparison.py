"""comparison.json and the verdicts, built in one place.

The ladder, ``tunewise compare``, ``tunewise gate`` and ``tunewise report`` (when eval.json has
no current comparison) all call :func:`build`, so the file has the same fields whoever wrote it:
CIs for every candidate and metric, paired tests for :func:`pairs_to_test`, the margin tests the
decisions need (against the production version and ``gate.reference``), the judge's agreement with
people and with the reference metric, the seed groups and the gate settings. :func:`gate_all`
then writes one verdict per gated candidate; the report only reads what these wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunewise.baselines.release import RELEASE_KINDS
from tunewise.candidates import CHAMPION, is_finetune_name
from tunewise.config.gate import GateConfig
from tunewise.decide.champion import attach_margin_tests
from tunewise.decide.gate import decide, save_verdict
from tunewise.decide.release import cost_order
from tunewise.errors import UserError
from tunewise.eval.calibration import attach_judge_agreement
from tunewise.eval.judge_reference import judge_vs_reference
from tunewise.eval.results import COMPARISON_FILE, VERDICT_FILE, Comparison, EvalRun, Verdict
from tunewise.eval.stats import CiMethod, Pair, compare, default_pairs, is_stale
from tunewise.rungs import RUNGS


def pairs_to_test(
    candidates: Sequence[str], baselines: Sequence[str], release_order: Sequence[str] = ()
) -> list[Pair]:
    """Every (candidate, baseline) pair a comparison tests, decided here only.

    The gate's pairs first (every other candidate against each baseline), then every candidate
    against each rung below the top one (few-shot vs the prompt, RAG vs both, ...): the advice
    reads those to find the cheapest rung that nothing above it clearly beats. A lower rung is
    paired only when it is a baseline, so the two stay one decision. Last, each context-trained
    fine-tune against the same fine-tune without context: what training with the context bought.
    With ``release_order`` (``gate.release_order``), also every releasable candidate against
    each cheaper one: the release rule (:mod:`tunewise.decide.release`) reads those.
    """
    pairs = default_pairs(candidates, baselines)
    for lower in RUNGS[:-1]:
        if lower in baselines and lower in candidates:
            pairs += [(c, lower) for c in candidates if c != lower]
    pairs += _variant_pairs(candidates)
    order, _ = cost_order(candidates, release_order)
    pairs += [(dear, cheap) for i, cheap in enumerate(order) for dear in order[i + 1 :]]
    return list(dict.fromkeys(pairs))


def _variant_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Each context-trained fine-tune against the same fine-tune without context
    (``finetuned+fewshot`` vs ``finetuned``): what training with the context bought."""
    out = []
    for name in names:
        for mode in ("fewshot", "rag"):
            plain = name.removesuffix(f"+{mode}")
            if plain != name and plain in names and is_finetune_name(plain):
                out.append((name, plain))
    return out


def default_baselines(run: EvalRun, gate_cfg: GateConfig) -> list[str]:
    """What a comparison tests against: the rungs the evaluation scored, and the gate's
    baselines (which may add references such as ``knn``)."""
    names = {c.name for c in run.candidates}
    return list(dict.fromkeys([r for r in RUNGS if r in names] + list(gate_cfg.baselines)))


def build(
    run: EvalRun,
    eval_dir: Path,
    gate_cfg: GateConfig,
    *,
    gated: Sequence[str],
    baselines: Sequence[str] | None = None,
    champion: str | None = None,
    champion_candidate: str = CHAMPION,
    n_boot: int = 2000,
    seed: int = 0,
    ci_method: CiMethod = "bca",
) -> Comparison:
    """Compute comparison.json for ``run`` (saved in ``eval_dir``) and return it.

    ``gated`` are the candidates the margin tests are run for (the fine-tunes, or the one
    ``tunewise gate --candidate`` names); ``champion`` is the production version's spec when the
    evaluation carries it."""
    bases = list(baselines) if baselines is not None else default_baselines(run, gate_cfg)
    names = [c.name for c in run.candidates]
    comp = compare(
        run,
        baselines=bases,
        pairs=pairs_to_test(names, bases, gate_cfg.release_order),
        alpha=gate_cfg.alpha,
        n_boot=n_boot,
        seed=seed,
        ci_method=ci_method,
    )
    # gate_baselines: what the gate holds a fine-tune to (the advice reads it), a subset of the
    # baselines the comparison tested
    comp.meta.update(
        {"alpha": gate_cfg.alpha, "delta": gate_cfg.delta, "gate_baselines": gate_cfg.baselines}
    )
    return refresh_margin_tests(comp, run, eval_dir, gate_cfg, gated, champion, champion_candidate)


def refresh_margin_tests(
    comp: Comparison,
    run: EvalRun,
    eval_dir: Path,
    gate_cfg: GateConfig,
    gated: Sequence[str],
    champion: str | None = None,
    champion_candidate: str = CHAMPION,
) -> Comparison:
    """Put what the decisions need beside the paired tests (margin tests for ``gated``, the
    judge's agreement with people, the seed groups) and save comparison.json."""
    # the release rule may pick a rung or classifier: it faces the production version too
    releasable = [c.name for c in run.candidates if c.name in RELEASE_KINDS]
    attach_margin_tests(comp, run, gate_cfg, [*gated, *releasable], champion, champion_candidate)
    attach_judge_agreement(comp, run, eval_dir)
    comp.meta["seed_groups"] = run.meta.get("seed_groups", {})  # tunewise run --seeds N
    if "judge" in run.meta:  # whether the judge's scores are evidence (see decisions.judge_reason)
        comp.meta["judge"] = run.meta["judge"]
    versus = judge_vs_reference(run)  # the judge against the references, where both exist
    if versus is not None:
        comp.meta["judge_vs_reference"] = versus
    comp.save(eval_dir / COMPARISON_FILE)
    return comp


def load_current(run: EvalRun, eval_dir: Path, gate_cfg: GateConfig) -> Comparison | None:
    """The saved comparison when it was computed from this evaluation and tested every baseline
    the gate needs; None when it must be built again (about a second)."""
    path = eval_dir / COMPARISON_FILE
    if not path.is_file():
        return None
    comp = Comparison.load(path)
    names = {c.name for c in run.candidates}
    tested = comp.meta.get("baselines", [])
    if is_stale(comp, run) or any(b in names and b not in tested for b in gate_cfg.baselines):
        return None
    return comp


def gate_all(
    comp: Comparison, eval_dir: Path, gate_cfg: GateConfig, gated: Sequence[str]
) -> dict[str, Any]:
    """A verdict-<candidate>.json per gated candidate, and verdict.json: the shipped candidate
    (the best passing one on the primary metric), else the best that failed."""
    verdicts: dict[str, str] = {}
    passing: list[tuple[float, str]] = []
    best: tuple[float, str] | None = None
    for cand in gated:
        verdict = decide(comp, cand, gate_cfg)
        path = eval_dir / f"verdict-{cand}.json"
        save_verdict(verdict, path, gate_cfg)
        verdicts[cand] = str(path)
        score = comp.metrics.get(cand, {}).get(comp.primary_metric)
        value = score.value if score is not None else float("-inf")
        if best is None or value > best[0]:
            best = (value, cand)
        if verdict.ship:
            passing.append((value, cand))
    ship = max(passing)[1] if passing else None
    chosen = ship or (best[1] if best else None)
    if chosen:
        # verdict.json is the decision of record: the shipped candidate, else the best that failed.
        Verdict.load(verdicts[chosen]).save(eval_dir / VERDICT_FILE)
    return {
        "comparison": str(eval_dir / COMPARISON_FILE),
        "verdicts": verdicts,
        "ship": ship,
        "best_verdict": verdicts.get(chosen) if chosen else None,
    }


def provisional_verdicts(comp: Comparison, gate_cfg: GateConfig) -> list[Verdict]:
    """What the gate would say of every non-baseline candidate, for a report drawn before any
    ``tunewise gate`` (the report marks them provisional)."""
    out = []
    for name in comp.metrics:
        if name in gate_cfg.baselines or comp.primary_metric not in comp.metrics[name]:
            continue
        try:
            out.append(decide(comp, name, gate_cfg))
        except UserError:
            continue
    return out
