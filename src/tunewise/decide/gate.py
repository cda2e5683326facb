"""The ship decision: a pure function of the comparison.

:func:`decide` composes the rules: superiority over every baseline
(:mod:`tunewise.decide.superiority`, which carries the statistical argument), or non-inferiority to
``gate.reference`` (:mod:`tunewise.decide.decisions`); then the seed, champion/challenger and judge
checks. ``decide`` reads nothing and writes nothing; the CLI saves its :class:`Verdict` as
verdict.json.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tunewise.config.gate import GateConfig
from tunewise.decide import decisions
from tunewise.decide.superiority import superiority
from tunewise.eval.results import Comparison, Verdict


def decide(comparison: Comparison, candidate: str, gate_cfg: GateConfig) -> Verdict:
    """Ship or not: :func:`superiority`, or non-inferiority to ``gate.reference`` when
    ``gate.mode`` says so (:mod:`tunewise.decide.decisions`); either way also not worse than the
    production version when the comparison carries one (champion/challenger); for a group of
    training seeds, the worst seed must clear the baselines too; and refused when a judge-scored
    primary metric comes from a judge that agrees too little with people."""
    if gate_cfg.mode == "non_inferiority":
        verdict = decisions.decide_non_inferiority(comparison, candidate, gate_cfg)
    else:
        verdict = superiority(comparison, candidate, gate_cfg)
    verdict = decisions.with_seeds(verdict, comparison, gate_cfg)
    verdict = decisions.with_champion(verdict, comparison, gate_cfg)
    return decisions.with_judge_check(verdict, comparison, gate_cfg)


# ----------------------------------------------------------------------------- persistence
# The file format lives with the dataclass (eval/results.py); the gate adds its settings.
def save_verdict(verdict: Verdict, path: str | Path, gate_cfg: GateConfig | None = None) -> None:
    """Write verdict.json, with the gate settings that produced it when given."""
    if gate_cfg is not None:
        verdict = replace(verdict, gate=gate_cfg.model_dump(mode="json"))
    verdict.save(path)


def load_verdict(path: str | Path) -> Verdict:
    return Verdict.load(path)
