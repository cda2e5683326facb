"""What the stages of one ladder share: :class:`LadderPlan` (config, work folder, candidates, runs).

:func:`tunewise.ladder.workflow.run_ladder` makes one plan and fills in its runs while it writes
the stage rows; the stage bodies (:mod:`~tunewise.ladder.data_stages`,
:mod:`~tunewise.ladder.eval_stages`, :mod:`~tunewise.ladder.registry_stages`,
:mod:`~tunewise.ladder.train_stages`) read it when they run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from tunewise.candidates import listed_untrained
from tunewise.config import ProjectConfig


@dataclass(frozen=True)
class LadderPlan:
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
    def of(cls, cfg: ProjectConfig, con: Console, quiet: bool) -> LadderPlan:
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


def data_files(cfg: ProjectConfig) -> dict[str, Path]:
    """``train``, and ``val`` / ``test`` when the project names its own files."""
    given = {"val": cfg.data.val, "test": cfg.data.test}
    return {"train": cfg.data.train, **{k: v for k, v in given.items() if v is not None}}


def gated(plan: LadderPlan) -> list[str]:
    """The candidates the gate decides on: each group of seeds as one, and every other run."""
    seeded = {m for members in plan.groups.values() for m in members}
    return [*plan.groups, *(r for r in plan.runs if r not in seeded)]
