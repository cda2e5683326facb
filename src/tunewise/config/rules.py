"""The cross-section rules: checks between fields of two sections, run when a project file is
loaded (:func:`tunewise.config.load.load_project`).

Each rule is one a later stage would otherwise fail on (or silently decide wrong), found from the
config alone, so it is refused at load in one line that names both fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tunewise.candidates import (
    CLASSICAL,
    CONSTRAINED_SUFFIX,
    EXTERNAL,
    KNN,
    TRAINED_GROUPS,
    is_finetune_name,
    unconstrained,
)
from tunewise.config.data import DataConfig
from tunewise.config.eval import TOOL_ERROR_RATES, TOOL_METRICS, TOOLS_PRIMARY, EvalConfig
from tunewise.config.gate import GateConfig
from tunewise.config.task import TaskConfig
from tunewise.config.train import TrainConfig
from tunewise.rungs import RUNGS

# The validation-context key under which load_project asks for the rules.
RULES_CONTEXT = "cross_section_rules"

_FINETUNED_FEWSHOT = "finetuned+fewshot"  # the runs trained with few-shot context


class ProjectSections(Protocol):
    """What a rule reads of a project: its sections. A
    :class:`~tunewise.config.project.ProjectConfig` is one; the rules cannot name it, because it
    runs them in a validator and so imports this module."""

    @property
    def task(self) -> TaskConfig: ...
    @property
    def data(self) -> DataConfig: ...
    @property
    def train(self) -> TrainConfig: ...
    @property
    def eval(self) -> EvalConfig: ...
    @property
    def gate(self) -> GateConfig: ...


@dataclass(frozen=True)
class CrossSectionRule:
    """A rule between two fields of different sections, checked when project.yaml is loaded."""

    fields: tuple[str, str]
    summary: str  # what the rule requires, for docs/project-yaml.md
    check: Callable[[ProjectSections], str | None]  # the one-line problem, or None


def _names(values: list[str]) -> str:
    return "[" + ", ".join(values) + "]"


def _evaluated(cfg: ProjectSections) -> set[str]:
    """Every candidate the ladder's evaluation scores besides the fine-tunes: the listed ones,
    the non-inferiority reference, and the references the evaluator adds on a labels task (as
    tunewise.eval.harness.plan_candidates does)."""
    ev = cfg.eval
    listed = [c for c in ev.candidates if c not in TRAINED_GROUPS]
    if cfg.gate.mode == "non_inferiority" and cfg.gate.reference:
        listed.append(cfg.gate.reference)  # the ladder evaluates it on the same items
    names = set(listed)
    if EXTERNAL in names:
        names |= {e.name for e in ev.external}
    if cfg.task.type == "labels":
        if "rag" in names and "train" in ev.rag.sources:
            names.add(KNN)
        if ev.classical and any(r in names for r in RUNGS):
            names.update(CLASSICAL)
    # labels are scored, calls decoded under the tools' grammar (tunewise.eval.harness)
    constrains = cfg.task.type in ("labels", "tools") and ev.constrained
    if constrains and not any(c.endswith(CONSTRAINED_SUFFIX) for c in listed):
        names |= {f"{r}{CONSTRAINED_SUFFIX}" for r in RUNGS if r in names}
    return names


def _baselines_are_evaluated(cfg: ProjectSections) -> str | None:
    # The gate marks a baseline missing from the evaluation as not beaten: the fine-tune could
    # never ship, and the reason would only show after training.
    evaluated = _evaluated(cfg)
    for base in cfg.gate.baselines:
        if base not in evaluated:
            return (
                f"gate.baselines: {base!r} is not in eval.candidates "
                f"{_names(cfg.eval.candidates)}: a baseline the gate compares against must be "
                "evaluated (add it to eval.candidates or remove it from gate.baselines)"
            )
    return None


def _listed_variants_are_trained(cfg: ProjectSections) -> str | None:
    # Without the variant, "finetuned+fewshot" names no run: the ladder would evaluate nothing
    # under it: refused at load, before anything trains.
    variants = cfg.train.variants or [cfg.train.context]
    for name in cfg.eval.candidates:
        if unconstrained(name) != _FINETUNED_FEWSHOT or "fewshot" in variants:
            continue
        given = "train.variants" if cfg.train.variants else "train.variants (train.context)"
        return (
            f"eval.candidates: {name!r} needs a run trained with few-shot context, but "
            f"{given} is {_names(variants)}: set train.variants: [none, fewshot]"
        )
    return None


# Metric -> the grader that scores it (tunewise.eval.graders.Grader and the judge).
_METRIC_GRADER = {
    "exact_match": "exact",
    "format_compliance": "format",
    "judge": "judge",
    **{m: m for m in ("chrf", "bleu", "rougeL", "similarity")},  # reference metrics: own grader
}


def _tool_metric_problem(cfg: ProjectSections) -> str | None:
    """What is wrong with a primary metric on a tools task, or a tools metric elsewhere."""
    ev, pm, tools_task = cfg.eval, cfg.eval.primary_metric, cfg.task.type == "tools"
    if pm in TOOL_ERROR_RATES:
        return (
            f"eval.primary_metric: {pm!r} is an error rate (lower is better) and the gate "
            f"ships the higher score; use {TOOLS_PRIMARY}"
        )
    if pm in TOOL_METRICS and not (tools_task or "tools" in ev.graders):
        return (
            f"eval.primary_metric: {pm!r} needs the tools grader in eval.graders "
            f"{_names(list(ev.graders))} (or task.type: tools)"
        )
    if tools_task and pm in ("accuracy", "macro_f1"):
        return (
            f"eval.primary_metric: {pm!r} is not scored on function calls (task.type: tools); "
            f"use {TOOLS_PRIMARY} (every call exactly right), name_accuracy or arg_f1"
        )
    return None


def _primary_metric_is_scored(cfg: ProjectSections) -> str | None:
    # A primary metric no grader scores fails the gate ("was not measured") after training.
    ev, pm = cfg.eval, cfg.eval.primary_metric
    graders = _names(list(ev.graders))
    grader = _METRIC_GRADER.get(pm)
    tools = _tool_metric_problem(cfg)
    if tools:
        return tools
    if pm == "accuracy" and cfg.task.type == "text":
        # Free text has no label to be right about: "accuracy" would be exact match under another
        # name, which a correct paraphrase fails.
        return (
            "eval.primary_metric: 'accuracy' means nothing on free text (task.type: text); use a "
            "reference metric (chrf, bleu, rougeL, similarity) or exact_match"
        )
    if grader and grader not in ev.graders:
        return f"eval.primary_metric: {pm!r} needs the {grader} grader in eval.graders {graders}"
    json_scored = cfg.task.type == "json" or "json" in ev.graders
    if pm in ("json_valid", "schema_valid") and not json_scored:
        return (
            f"eval.primary_metric: {pm!r} needs the json grader in eval.graders {graders} "
            "(or task.type: json)"
        )
    if pm == "schema_valid" and cfg.task.json_schema is None:
        return "eval.primary_metric: 'schema_valid' needs task.json_schema (the schema to check)"
    if pm == "format_compliance" and not (
        cfg.task.type in ("labels", "json", "tools")
        or cfg.task.output_pattern
        or "json" in ev.graders
    ):
        return (
            "eval.primary_metric: 'format_compliance' on a text task needs task.output_pattern "
            "(the format to comply with)"
        )
    return None


# Graders that read an answer as something a function call is not; each one's reason.
_NOT_FOR_TOOLS = {
    "label": "label accuracy reads an answer as labels",
    "json": "the json grader reads the whole answer as one JSON value",
}


def _graders_fit_the_task(cfg: ProjectSections) -> str | None:
    # On a tools task these would score every call as wrong (or nothing at all), and their
    # numbers would sit beside call_accuracy in the report looking like evidence.
    if cfg.task.type != "tools":
        return None
    for grader in cfg.eval.graders:
        if grader in _NOT_FOR_TOOLS:
            return (
                f"eval.graders: {grader!r} does not fit task.type tools ({_NOT_FOR_TOOLS[grader]}, "
                "not as calls); the tools grader scores calls: use [tools, format]"
            )
    return None


def _rag_has_a_source(cfg: ProjectSections) -> str | None:
    # Retrieving from docs alone without data.docs builds an empty index: the rag rung (or a RAG
    # prompt, or rag context) would fail when it first retrieves.
    rc = cfg.eval.rag
    if "train" in rc.sources or cfg.data.docs is not None:
        return None
    variants = cfg.train.variants or [cfg.train.context]
    plain = [unconstrained(c) for c in cfg.eval.candidates]
    if any(c == "rag" or c.endswith("+rag") for c in plain) or "rag" in variants:
        return (
            f"eval.rag.sources: {_names(list(rc.sources))} retrieves from documents only, but "
            "data.docs is not set: set data.docs, or add train to eval.rag.sources"
        )
    return None


def _reference_is_a_candidate(cfg: ProjectSections) -> str | None:
    # The ladder evaluates gate.reference beside the listed candidates; a name the evaluator does
    # not know stops it with "unknown candidate" once the baselines are evaluated.
    ref = cfg.gate.reference
    if cfg.gate.mode != "non_inferiority" or not ref:
        return None
    ext = [e.name for e in cfg.eval.external]
    known = {*RUNGS, KNN, *CLASSICAL, EXTERNAL, *ext, *cfg.eval.candidates}
    base = unconstrained(ref)
    if base in known or is_finetune_name(base) or base.endswith("+rag"):
        return None
    return (
        f"gate.reference: {ref!r} is not an eval.external name {_names(ext)} nor a candidate "
        f"the evaluation knows (eval.candidates {_names(cfg.eval.candidates)})"
    )


CROSS_SECTION_RULES: tuple[CrossSectionRule, ...] = (
    CrossSectionRule(
        ("gate.baselines", "eval.candidates"),
        "every gate baseline is evaluated: listed in eval.candidates (an eval.external name also "
        "by `external`), or a reference the evaluation adds on a labels task (knn beside rag when "
        "eval.rag.sources has train; tfidf and probe with eval.classical; rung+constrained with "
        "eval.constrained when none is listed); non_inferiority's gate.reference counts too",
        _baselines_are_evaluated,
    ),
    CrossSectionRule(
        ("eval.candidates", "train.variants"),
        "finetuned+fewshot (or finetuned+fewshot+constrained) in eval.candidates needs fewshot in "
        "train.variants (default [train.context]): the variant trains the run it names. "
        "finetuned+rag needs no variant: it is the plain run with a RAG prompt",
        _listed_variants_are_trained,
    ),
    CrossSectionRule(
        ("eval.primary_metric", "eval.graders"),
        "the primary metric is scored: judge needs the judge grader, exact_match exact, "
        "format_compliance format (and, on a text task, task.output_pattern); json_valid and "
        "schema_valid need the json grader or task.type json, schema_valid also "
        "task.json_schema; call_accuracy and the other tools metrics need the tools grader or "
        "task.type tools, whose primary metric is one of them (not accuracy or macro_f1) and never "
        "an error rate (wrong_call, missed_call, call_parse_errors)",
        _primary_metric_is_scored,
    ),
    CrossSectionRule(
        ("eval.graders", "task.type"),
        "a tools task (function calls) is not graded by label or json, which read an answer as "
        "labels or as one JSON value; the tools grader scores its calls (on by itself)",
        _graders_fit_the_task,
    ),
    CrossSectionRule(
        ("eval.rag.sources", "data.docs"),
        "when anything retrieves with rag (the rag rung, a +rag candidate, rag in train.variants), "
        "eval.rag.sources has train, or data.docs is set",
        _rag_has_a_source,
    ),
    CrossSectionRule(
        ("gate.reference", "eval.external"),
        "in non_inferiority mode, gate.reference is a candidate the evaluation can run: an "
        "eval.external name, a rung, knn, tfidf, probe, a fine-tune or one of eval.candidates",
        _reference_is_a_candidate,
    ),
)
