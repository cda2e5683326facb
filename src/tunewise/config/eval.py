"""The ``eval`` section (with ``eval.fewshot``, ``eval.rag``, ``eval.external``): which
candidates answer the validation items, and how their answers are scored."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunewise.config.section import _Section

# The metrics of the tools grader (tunewise.eval.tool_graders), named here where eval.primary_metric
# is validated. The error rates are lower-is-better: never a primary metric (the gate maximises it).
TOOLS_PRIMARY = "call_accuracy"
TOOL_ERROR_RATES: tuple[str, ...] = ("wrong_call", "missed_call", "call_parse_errors")
TOOL_METRICS: tuple[str, ...] = (
    TOOLS_PRIMARY,
    "name_accuracy",
    "arg_precision",
    "arg_recall",
    "arg_f1",
    "call_schema_valid",
    *TOOL_ERROR_RATES,
)
# What a tools task scores when eval.graders is not given: its calls, and their validity as the
# format guard (format_compliance = call_schema_valid).
TOOLS_GRADERS: tuple[str, ...] = ("tools", "format")


class FewShotConfig(_Section):
    """The fewshot rung (and train.context: fewshot): labelled train examples as earlier turns."""

    k: int = Field(4, ge=1, description="train examples shown before each query")
    selection: Literal["random", "similar"] = Field(
        "similar",
        description="similar: the k nearest by embedding (a query never sees itself); random: "
        "seeded by data.split.seed and the query's own prompt, so reruns pick the same shots",
    )


class RagConfig(_Section):
    """The rag rung (and train.context: rag): retrieved passages in the system turn."""

    k: int = Field(3, ge=1, description="passages retrieved per query")
    sources: list[Literal["docs", "train"]] = Field(
        ["docs", "train"],
        description="what is retrieved: docs (chunks of data.docs, skipped when it is not set) "
        "and/or train (labelled train examples as passages)",
    )
    hybrid: bool = Field(True, description="FAISS dense retrieval fused with BM25")


class ExternalConfig(_Section):
    """An OpenAI-compatible chat endpoint evaluated as a candidate (a frontier API, vLLM, ...)."""

    name: str = Field(
        ...,
        description="the candidate's name, as eval.candidates, gate.baselines, gate.reference "
        "and eval.judge_model refer to it",
    )
    base_url: str = Field(
        ...,
        description="endpoint root; requests go to {base_url}/chat/completions (usually ends "
        "in /v1)",
    )
    model: str = Field(..., description="model name sent with each request")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")


class EvalConfig(_Section):
    """Which candidates answer the validation items, and how their answers are scored."""

    candidates: list[str] = Field(
        ["prompt", "fewshot", "rag", "finetuned"],
        description="what is evaluated on the same items: the rungs prompt, fewshot, rag; "
        "finetuned (every run the ladder trains), finetuned+rag (a run with a RAG prompt), "
        "finetuned+fewshot (runs trained with few-shot context); knn, tfidf, probe (no LLM, "
        "labels tasks); an eval.external name, or external for all; X+constrained (labels scored "
        "by log-likelihood). Default: the ladder's three rungs and the fine-tune",
    )
    fewshot: FewShotConfig = Field(
        FewShotConfig(), description="settings of the fewshot rung and of fewshot context"
    )
    rag: RagConfig = Field(RagConfig(), description="settings of the rag rung and of rag context")
    external: list[ExternalConfig] = Field(
        [], description="OpenAI-compatible endpoints, each evaluated as a candidate by its name"
    )
    graders: list[
        Literal[
            "exact",
            "format",
            "label",
            "json",
            "tools",
            "judge",
            "chrf",
            "bleu",
            "rougeL",
            "similarity",
        ]
    ] = Field(
        ["format", "label", "exact"],
        description="scorers: exact (exact_match), format (format_compliance), label (accuracy "
        "and accuracy_<field>, labels tasks), json (json_valid, schema_valid, accuracy, per-key "
        "scores), tools (function calls: call_accuracy, name_accuracy, arg_precision/recall/f1, "
        "call_schema_valid, wrong_call, missed_call, call_parse_errors; on by itself for "
        "task.type tools), judge (an LLM judge's rubric score, 0 to 1); for free text, against "
        "every reference of the item: chrf and bleu (sacrebleu, per item 0 to 1, corpus score as "
        "sacrebleu reports it), rougeL (rouge-score), similarity (embedding cosine); accuracy is "
        "scored on labels and json tasks. Default on a tools task: [tools, format]",
    )
    primary_metric: str = Field(
        "accuracy",
        description="the metric the gate decides on: accuracy (labels and json tasks), or one a "
        "grader in eval.graders scores (exact_match, format_compliance, json_valid, "
        "schema_valid, judge, chrf, bleu, rougeL, similarity, accuracy_<field>, call_accuracy, "
        "name_accuracy, arg_f1, ...), or macro_f1 (labels tasks). Default on a tools task: "
        "call_accuracy (every call exactly right)",
    )
    constrained: bool = Field(
        True,
        description="also score labels by log-likelihood (labels tasks): an X+constrained "
        "candidate for each local rung and fine-tune, unless eval.candidates lists some itself",
    )
    classical: bool = Field(
        True,
        description="also run tfidf and probe: scikit-learn classifiers, no LLM (labels tasks)",
    )
    max_new_tokens: int | Literal["auto"] = Field(
        "auto",
        description="generation budget per answer, in tokens; auto: the longest train answer "
        "plus a margin (8 tokens or 10%), room for a slightly longer phrasing without paying "
        "for runaway answers",
    )
    batch_size: int = Field(16, ge=1, description="prompts generated together by a local model")
    limit: int | None = Field(
        None, ge=1, description="evaluate on the first N validation items only"
    )
    judge_model: str | None = Field(
        None,
        description="local model or eval.external name for the LLM judge; unset, the base model "
        "judges itself (weak: set a stronger one)",
    )
