"""What makes a served answer worth a label, read with the graders and a model.

:mod:`tunewise.data.from_traffic` ranks logged requests by signals it cannot compute itself (the
data layer sits below the graders): this module builds them for a project.

* :func:`format_check`: whether an answer keeps the task's format, the check the ``format``
  grader scores (``format_compliance``): labels in ``task.output_pattern`` with allowed values,
  JSON (against ``task.json_schema`` when set), calls that name one of the tools and fit its
  parameters schema with no unreadable ``<tool_call>`` block. A free-text task without an output
  pattern has no format to fail. The teacher's answers go through the same check.
* :func:`margin_scorer`: on a labels task, the constrained-label margin
  (:class:`tunewise.eval.constrained.ConstrainedLabeler`): the calibrated log-likelihood gap
  between the label the model finds most likely and the runner-up. A small gap is a request the
  model hesitated on. Scoring loads the base model (and the production adapter when given) and
  scores every allowed answer per request, so it runs only when that is cheap: at most ``budget``
  scored answers, else it is skipped with a note saying how to raise the budget.

:func:`select_requests` runs the whole selection for ``tunewise data from-traffic`` with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tunewise.config import ProjectConfig
from tunewise.data.dedup import THRESHOLD
from tunewise.data.from_traffic import (
    LOW_MARGIN,
    FormatCheck,
    MarginScorer,
    Selection,
    load_known,
    read_items,
    select,
)
from tunewise.data.labels import LabelSpec
from tunewise.data.schema import Example
from tunewise.eval.constrained import ConstrainedLabeler
from tunewise.eval.graders import json_scores
from tunewise.eval.tool_graders import tool_scores
from tunewise.runtime.cache import GenCache

MARGIN_BUDGET = 20_000  # scored answers (requests x allowed answers): minutes on a small model


def format_check(cfg: ProjectConfig, train: Sequence[Example] = ()) -> FormatCheck | None:
    """The project's format as a check of one answer (None when the task has no format)."""
    task = cfg.task
    project_tools = task.tools if isinstance(task.tools, list) else []
    spec = (
        LabelSpec.from_config(cfg, train) if task.type == "labels" or task.output_pattern else None
    )
    if task.type == "tools":

        def calls_ok(answer: str, tools: list[dict[str, Any]]) -> bool | None:
            scores, _ = tool_scores(answer, answer, tools or project_tools)
            return bool(scores["call_schema_valid"]) and not scores["call_parse_errors"]

        return calls_ok
    if task.type == "json":

        def json_ok(answer: str, tools: list[dict[str, Any]]) -> bool | None:
            scores = json_scores(answer, answer, task.json_schema)
            return bool(scores.get("schema_valid", scores["json_valid"]))

        return json_ok
    if spec is not None:
        return lambda answer, tools: spec.complies(answer)
    return None


def _cost(labeler: ConstrainedLabeler) -> int:
    """Answers scored per request: every combination, or each field's values in turn."""
    if labeler.joint:
        return labeler.n_combinations
    return sum(len(labeler.spec.labels[f]) for f in labeler.template.slots)


def margin_scorer(
    cfg: ProjectConfig,
    train: Sequence[Example],
    *,
    adapter: Path | None = None,
    budget: int = MARGIN_BUDGET,
) -> MarginScorer | None:
    """Margins with the project's base model (plus ``adapter``, a training run's folder: the
    production adapter), or None on a task that has no labels to hesitate between."""
    if cfg.task.type != "labels":
        return None
    spec = LabelSpec.from_config(cfg, train)
    refs = [ex.target for ex in train]

    def score(examples: list[Example]) -> tuple[list[float] | None, str | None]:
        if not any(spec.labels.get(f) for f in spec.fields):
            return None, "label margins not scored: no allowed labels (set task.labels)"
        labeler = ConstrainedLabeler(spec, refs)
        need = len(examples) * _cost(labeler)
        if need > budget:
            return None, (
                f"label margins not scored: {len(examples)} requests x {_cost(labeler)} answers "
                f"= {need} scorings is over --margin-budget {budget}"
            )
        prompts = [ex.with_system(cfg.task.system_prompt).prompt_messages for ex in examples]
        return _margins(cfg, labeler, prompts, adapter), None

    return score


def _margins(
    cfg: ProjectConfig,
    labeler: ConstrainedLabeler,
    prompts: list[list[dict[str, Any]]],
    adapter: Path | None,
) -> list[float]:
    # lazy: torch and the model; only a labels project with a small enough log pays for them
    from tunewise.runtime import device, models
    from tunewise.runtime.engine import Engine

    with GenCache() as cache:
        engine = Engine(
            models.resolve(cfg.model.base),
            batch_size=cfg.eval.batch_size,
            cache=cache,
            placement=device.for_project(cfg, "infer"),
            allow_special_tokens_in_content=cfg.model.allow_special_tokens_in_content,
        )
        name = None
        if adapter is not None:
            name = "production"
            engine.load_adapter(name, adapter)
        chosen = labeler.choose_many(engine, prompts, name)
    return [float(meta["margin"]) for _, meta in chosen]


def select_requests(
    records: Iterable[tuple[Path, int, dict[str, Any]]],
    cfg: ProjectConfig | None,
    *,
    limit: int | None = None,
    adapter: Path | None = None,
    budget: int | None = None,
    low_margin: float = LOW_MARGIN,
) -> tuple[Selection, FormatCheck | None]:
    """The logged requests worth a label, ranked (:func:`select`), and the format check used
    (the teacher's answers go through it too). ``records``: (file, line, record), production's
    and the shadow's, as :func:`tunewise.serve.traffic.iter_traffic` reads them. Without a
    project nothing is compared with train/val/test and no format or margin is read: only
    repeats are dropped."""
    tools = cfg.task.tools if cfg is not None and isinstance(cfg.task.tools, list) else None
    items, counts, notes = read_items(records, tools)
    if cfg is None:
        known: dict[str, list[Example]] = {}
        threshold, fmt, margins = THRESHOLD, None, None
        notes.append("no --project: not compared with train/val/test, no format or margin read")
    else:
        known, threshold, note = load_known(cfg)
        notes += [note] if note else []
        train = known.get("train", [])
        fmt = format_check(cfg, train)
        budget = MARGIN_BUDGET if budget is None else budget
        margins = margin_scorer(cfg, train, adapter=adapter, budget=budget)
    selection = select(
        items,
        known,
        threshold=threshold,
        format_ok=fmt,
        margins=margins,
        low_margin=low_margin,
        limit=limit,
    )
    selection.counts.update(counts)
    selection.notes[:0] = notes
    return selection, fmt
