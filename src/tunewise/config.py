"""``project.yaml``: every default and every validation in one place.

A project names its data, its task and how each rung of the ladder runs. Paths in the file are
relative to the file's own folder. Field descriptions double as documentation:
``python -m tunewise.config_docs`` renders them, with the cross-section rules, to
``docs/project-yaml.md``.

Rules that span two sections (``gate.baselines`` must be evaluated, ``eval.candidates`` may only
name context-trained runs the ladder trains, ...) are :data:`CROSS_SECTION_RULES`. They are checked
when a project file is loaded (:func:`load_project`), not when a run's recorded config is read back
(``tunewise train --resume``): a run recorded before a rule existed stays resumable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tunewise.candidates import (
    CLASSICAL,
    CONSTRAINED_SUFFIX,
    EXTERNAL,
    KNN,
    TRAINED_GROUPS,
    is_finetune_name,
    unconstrained,
)
from tunewise.errors import UserError
from tunewise.rungs import RUNGS

# The grammar of ``model.device`` (and ``--device``): owned here, where the field is validated;
# the device policy (:mod:`tunewise.runtime.device`) reads it from here.
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps"

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


# The largest magnitude any number in project.yaml may have. No count, rate or price here comes
# near it; past it a value is a typo (1e400 reads as inf) that would fail far from the file, after
# the model loads (an OverflowError in the step count), or quietly (a learning rate of inf).
MAX_MAGNITUDE = 10**12


def _too_large(value: Any) -> float | int | None:
    """The first number in ``value`` (a number, list or mapping of them) past MAX_MAGNITUDE."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if abs(value) > MAX_MAGNITUDE else None
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return next((big for v in value if (big := _too_large(v)) is not None), None)
    return None


class _Section(BaseModel):
    # Unknown keys are typos, and a typo in a training config silently costs a day. NaN and inf
    # are never meant: refused for every float field (allow_inf_nan), huge numbers just below.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _not_huge(cls, v: Any) -> Any:
        big = _too_large(v)
        if big is not None:
            # An int may be too large for a float, or for str() (4300 digits): say its size.
            shown = (
                f"{big:.3g}"
                if isinstance(big, float)
                else f"about {'-' if big < 0 else ''}10^{abs(big).bit_length() * 0.30103:.0f}"
            )
            raise PydanticCustomError(
                "number_too_large",
                "{shown} is too large: numbers here are at most 1e12 in size",
                {"shown": shown},
            )
        return v


class TaskConfig(_Section):
    """What the model is asked to do, and what a correct answer looks like."""

    type: Literal["labels", "text", "json", "tools"] = Field(
        "labels",
        description=(
            "labels: outputs are categorical (one or more fields); text: free text; "
            "json: JSON objects; tools: function calls (OpenAI tool_calls, graded per call)"
        ),
    )
    system_prompt: str = Field(
        "", description="the 'good prompt' of the prompt baseline, also used by every candidate"
    )
    output_pattern: str | None = Field(
        None,
        description="regex the assistant output must match (format compliance); named groups are "
        "label fields, e.g. '^Category: (?P<category>.+)\\nPriority: (?P<priority>.+)$'. "
        "Inferred by `data check` when absent.",
    )
    labels: dict[str, list[str]] | None = Field(
        None, description="allowed values per label field; inferred from train when absent"
    )
    json_schema: dict[str, Any] | None = Field(
        None, description="JSON schema the output must conform to (type: json)"
    )
    tools: list[dict[str, Any]] | str | None = Field(
        None,
        description="the functions every example may call (type: tools): a list of OpenAI tool "
        "schemas, or the path of a JSON file holding one (relative to project.yaml). A data "
        "line's own 'tools' take precedence for that line",
    )
    refusal_pattern: str | None = Field(
        None,
        description="regex (searched, case-insensitive) that marks an answer as a refusal, e.g. "
        "'^(I'm sorry|I can't|I cannot)'. With it every candidate gets refusal_recall (refused "
        "where the reference refuses) and refusal_precision (refusals that were due); a line's "
        "'refusal': true/false overrides the pattern for its reference",
    )

    @field_validator("refusal_pattern")
    @classmethod
    def _refusal_pattern_compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regex: {exc}") from None
        return v


class SplitConfig(_Section):
    """How train is carved into train / validation / sealed test when no own file is given."""

    val: float = Field(
        0.1,
        ge=0.0,
        lt=0.5,
        description="fraction held out for validation (at least 10% is advised)",
    )
    test: float = Field(
        0.1,
        ge=0.0,
        lt=0.5,
        description="fraction sealed for the final test (`tunewise run --final`, used once)",
    )
    seed: int = Field(
        0,
        description="seeds the split's shuffle, and the fewshot rung's random selection: the same "
        "seed gives the same splits and shots on every machine",
    )


class DataConfig(_Section):
    """The project's data files; paths are relative to project.yaml's folder."""

    train: Path = Field(..., description="chat JSONL: one {'messages': [...]} per line")
    val: Path | None = Field(
        None,
        description="your own validation file (chat JSONL); when set, train is not re-split for it",
    )
    test: Path | None = Field(
        None,
        description="your own test file (chat JSONL), sealed like a test split tunewise makes; "
        "when set, train is not re-split for it",
    )
    docs: Path | None = Field(None, description="folder of .md/.txt documents for the RAG rung")
    split: SplitConfig = Field(
        SplitConfig(), description="fractions carved from train for val/test files not given"
    )
    max_len: int = Field(
        512,
        ge=16,
        description="token budget per example; longer ones are handled by train.overlong",
    )


class ModelConfig(_Section):
    """The base model every local candidate and every fine-tune starts from."""

    base: str = Field(
        "smollm2-135m-instruct", description="built-in name, local HF directory or hub id"
    )
    trust_remote_code: bool = Field(
        False,
        description="let Hugging Face run Python code shipped with the model (custom "
        "architectures); off because that code runs with your permissions",
    )
    device: str = Field(
        "auto",
        description="where the model runs: auto (a CUDA GPU, cuda:LOCAL_RANK under accelerate; "
        "else Apple mps; else the CPU), cpu, cuda, cuda:N or mps",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="number format of the weights. auto: bf16 on a GPU that has it (fp16 on older "
        "GPUs), fp32 on the CPU; full fine-tuning keeps fp32 weights under 16-bit autocast",
    )
    allow_special_tokens_in_content: bool = Field(
        False,
        description="treat control tokens written inside messages (such as '<|im_end|>') as "
        "control tokens in training and evaluation; by default they are plain text, so data "
        "cannot open or close turns",
    )

    @field_validator("device")
    @classmethod
    def _device_is_known(cls, v: str) -> str:
        if not DEVICE_PATTERN.fullmatch(v):
            raise ValueError(f"expected {DEVICE_HELP}, got {v!r}")
        return v


# The training vocabulary, named once (tunewise.train.methods builds on these).
Method = Literal["lora", "qlora", "full"]
LoraTarget = Literal["all-linear", "qv", "attn", "mlp"]


class TrainConfig(_Section):
    """How the fine-tune is trained (the ladder's last rung)."""

    method: Method = Field(
        "lora",
        description="lora: a low-rank adapter on the frozen base (cheap, the default); qlora: the "
        "same adapter on a 4-bit NF4 copy of the base (less memory); full: every weight trains. "
        "`tunewise run --methods lora,full` trains several and compares them",
    )
    lr: float | None = Field(
        None,
        gt=0,
        description="peak learning rate; default 2e-4 for lora/qlora, 2e-5 for full (every "
        "weight moves, so a tenth of the adapter's rate)",
    )
    epochs: float = Field(
        2.0,
        gt=0,
        description="passes over train (fractions allowed); 1-3 is advised, outside that range "
        "tunewise warns",
    )
    batch_size: int = Field(
        8, ge=1, description="examples per device per forward pass (also the validation batch)"
    )
    grad_accum: int = Field(
        1,
        ge=1,
        description="forward passes per optimizer step: the effective batch is batch_size x "
        "grad_accum (x processes), at the memory cost of batch_size",
    )
    max_steps: int | None = Field(
        None, ge=1, description="stop after this many optimizer steps (overrides epochs)"
    )
    scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine",
        description="learning-rate decay after warm-up: cosine or linear to 0, or constant",
    )
    warmup_ratio: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="share of the optimizer steps over which the learning rate rises from 0",
    )
    weight_decay: float = Field(
        0.0, description="AdamW weight decay; 0 because a short fine-tune rarely needs it"
    )
    lora_r: int = Field(
        16,
        ge=1,
        description="LoRA rank: width of the adapter matrices (lora/qlora); more rank, more "
        "trainable weights",
    )
    lora_alpha: int | None = Field(
        None,
        ge=1,
        description="LoRA scaling (the update is scaled by alpha / r); default 2 x lora_r",
    )
    lora_dropout: float = Field(
        0.05, ge=0, lt=1, description="dropout on the adapter's input (lora/qlora), 0 to 1"
    )
    target_modules: LoraTarget | list[str] = Field(
        "all-linear",
        description="layers that get an adapter: all-linear (every linear layer but the output "
        "head), qv (q_proj, v_proj), attn (q/k/v/o_proj), mlp (gate/up/down_proj), or a list of "
        "module names",
    )
    train_on: Literal["all", "last"] = Field(
        "all", description="loss on every assistant turn, or the last only"
    )
    overlong: Literal["drop", "truncate", "error"] = Field(
        "drop",
        description="examples longer than data.max_len tokens: drop them, truncate (keep the first "
        "max_len tokens) or stop with an error; training refuses when over half would be dropped",
    )
    eval_every: int | Literal["auto"] = Field(
        "auto",
        description="when validation runs (loss, then the overfitting check). auto: as often as "
        "train.eval_budget allows, timed on this run's own measured step and evaluation costs "
        "(docs/training.md); a whole number N >= 1: every N optimizer steps and at the last step",
    )
    eval_budget: float = Field(
        0.10,
        gt=0,
        le=0.5,
        description="eval_every auto: the most of the run's wall time that validation loss and the "
        "overfitting check together may take; a run with no evaluation yet still gets one at the "
        "end",
    )
    val_loss_items: int | Literal["auto"] = Field(
        "auto",
        description="validation items the loss is computed on: auto: the whole split up to 128 "
        "items, past that 128 drawn with train.seed, stratified by label; a whole number N >= 1: "
        "at most N (the overfitting check keeps its own train.overfit_sample prompts)",
    )
    save_every: int = Field(50, ge=1, description="checkpoint every N optimizer steps")
    early_stopping_patience: int = Field(
        3,
        ge=1,
        description="stop when the best validation loss is this many evaluations old; the best "
        "weights are restored",
    )
    overfit_sample: int = Field(
        8, ge=0, description="validation prompts generated at each eval for the repetition check"
    )
    overfit_repetition_threshold: float = Field(
        0.3,
        gt=0,
        le=1,
        description="stop as overfitting when validation loss still falls but the sampled "
        "generations' repeated 3-gram rate rose to at least this (0 to 1)",
    )
    group_by_length: bool = Field(
        True, description="batch examples of similar length together: less padding, faster"
    )
    shared_prefix: Literal["auto", "off"] = Field(
        "auto",
        description="run the prefix every row of a batch shares (the system prompt) once per "
        "batch, not once per row: same loss and gradients, fewer tokens through the model. auto: "
        "on when it saves at least 10% of an epoch's tokens; rows are batched by prefix. LoRA "
        "dropout draws one mask for the shared prefix (docs/training.md)",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="recompute activations in the backward pass: ~30% slower, far less activation "
        "memory; worth it for long sequences or big models on a GPU "
        "(`tunewise plan --grad-checkpointing` shows the saving)",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 mixed precision on a CUDA GPU that supports it, else fp32. bf16 on "
        "a CPU with AVX512-BF16/AMX trains ~1.4-1.8x faster here, but its validation loss is "
        "computed from bf16 logits "
        "and reads higher than fp32's, so it is opt-in",
    )
    context: Literal["none", "fewshot", "rag"] = Field(
        "none",
        description="retrieval-augmented fine-tuning (RAFT): train on prompts that carry the "
        "context the fewshot or rag rung shows (eval.fewshot / eval.rag settings, the example "
        "itself never retrieved); the run is evaluated and served with that same context",
    )
    context_distractor_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="train.context: share of examples trained with distractor-only context (no "
        "retrieved example carries their answer), so the model learns when not to copy one",
    )
    variants: list[Literal["none", "fewshot", "rag"]] | None = Field(
        None,
        description="the ladder trains one run per context variant and method, e.g. "
        "[none, fewshot]: plain LoRA and finetuned+fewshot, compared on the same items "
        "(default: [train.context])",
    )
    seed: int = Field(
        0,
        description="seeds the adapter's initialisation, the data order and the overfitting "
        "sample: the same seed, the same run (`tunewise run --seeds N` trains N seeds)",
    )

    @field_validator("variants")
    @classmethod
    def _variants_once(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("list each context variant once, at least one")
        return v

    @field_validator("eval_every", "val_loss_items", mode="before")
    @classmethod
    def _auto_or_count(cls, v: Any) -> Any:
        # One plain message; pydantic's own for a union lists one error per member.
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise PydanticCustomError(
            "auto_or_count", "expected auto or a whole number >= 1, got {v}", {"v": repr(v)}
        )

    @field_validator("shared_prefix", mode="before")
    @classmethod
    def _bare_off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false (and `on` as true, which stays an error).
        return "off" if v is False else v

    @property
    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 2e-5 if self.method == "full" else 2e-4

    @property
    def resolved_alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_r


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


class CostConfig(_Section):
    """The advisor's cost model, for the cost per 1,000 requests of a non-inferiority verdict."""

    requests_per_day: float = Field(..., gt=0, description="requests served per day")
    tokens_per_request: float = Field(..., gt=0, description="input + output tokens")
    api_price_per_mtok: float = Field(
        ..., gt=0, description="USD per million tokens of the API reference (blended)"
    )
    gpu_price_per_hour: float = Field(..., gt=0, description="USD per hour of the serving GPU")
    gpu_hours_per_day: float = Field(
        24.0,
        gt=0,
        le=24,
        description="hours a day the serving GPU is paid for (24: always on)",
    )


# The release rule's default cost order: no LLM first (TF-IDF needs no embedding model; kNN and the
# probe embed each request), then the base model with a growing prompt, then a trained adapter.
RELEASE_ORDER: tuple[str, ...] = ("tfidf", "knn", "probe", "prompt", "fewshot", "rag", "finetuned")
ReleaseEntry = Literal["tfidf", "knn", "probe", "prompt", "fewshot", "rag", "finetuned"]


class GateConfig(_Section):
    """Whether a fine-tune ships: paired tests on the primary metric, margins and guards."""

    mode: Literal["superiority", "non_inferiority"] = Field(
        "superiority",
        description="superiority: beat every baseline; non_inferiority: also be not worse than "
        "gate.reference by more than gate.margin (the cheaper-model case)",
    )
    reference: str | None = Field(
        None,
        description="non_inferiority: the candidate not to fall behind, e.g. an eval.external "
        "name (a frontier API)",
    )
    margin: float = Field(
        0.02, ge=0, lt=1, description="non_inferiority: the largest drop that is 'not worse'"
    )
    cost: CostConfig | None = Field(
        None, description="cost model for the cost per 1,000 requests in the verdict"
    )
    regression_margin: float = Field(
        0.01,
        ge=0,
        lt=1,
        description="a new version may trail the production version by at most this much "
        "(one-sided paired test on the same items)",
    )
    min_judge_kappa: float = Field(
        0.4,
        ge=-1,
        le=1,
        description="refuse a judge-scored primary metric when the judge's Cohen's kappa with "
        "human ratings (where they exist) is below this",
    )
    alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="significance level of each paired test (McNemar for 0/1 metrics, paired "
        "bootstrap otherwise); every baseline must be beaten, so no multiplicity correction",
    )
    delta: float = Field(
        0.02, ge=0, description="minimum margin on the primary metric over every baseline"
    )
    baselines: list[str] = Field(
        ["prompt", "fewshot", "rag"],
        description="candidates a fine-tune must beat on the primary metric (p < alpha, margin "
        ">= delta); each must be evaluated. Default: the ladder's three cheaper rungs; add knn, "
        "tfidf, probe or an external name to hold it to those too",
    )
    guards: dict[str, float] = Field(
        default_factory=lambda: {"format_compliance": 0.02},
        description=(
            "metric -> tolerated drop versus the best baseline; format compliance is always a guard"
        ),
    )
    release_order: list[ReleaseEntry] = Field(
        default_factory=lambda: list(RELEASE_ORDER),
        description="the release rule's cost order, cheapest to serve first: `tunewise run` "
        "registers and promotes the first candidate that nothing later in the list clearly beats "
        "on the primary metric (p < alpha, margin >= delta) or on a guard; 'finetuned' stands for "
        "every fine-tune (which must also pass its gate verdict). Leave an entry out to never "
        "release it",
        min_length=1,
    )

    @model_validator(mode="after")
    def _reference_for_non_inferiority(self) -> GateConfig:
        if self.mode == "non_inferiority" and not self.reference:
            raise ValueError("gate.mode non_inferiority needs gate.reference (a candidate name)")
        return self


class MlflowConfig(_Section):
    """Where MLflow records runs (optional: pip install 'tunewise[mlflow]')."""

    uri: str | None = Field(
        None,
        description="MLflow tracking URI: http://host:5000, or sqlite:///mlflow.db (relative to "
        "this file); the environment variable TUNEWISE_MLFLOW_URI overrides it",
    )
    experiment: str | None = Field(None, description="experiment name (default: the project name)")


class TrackingConfig(_Section):
    """Experiment tracking beside tunewise's own files."""

    mlflow: MlflowConfig = Field(
        MlflowConfig(),
        description="optional (pip install 'tunewise[mlflow]'): training runs, the ladder's "
        "results and registry aliases mirrored to MLflow",
    )


class ProjectConfig(_Section):
    """project.yaml: the project's name and one section per stage of the ladder."""

    name: str = Field(
        ...,
        description="the project's name: registry entry, run ids and MLflow experiment; letters, "
        "digits, '.', '_', '-' (max 64)",
    )
    task: TaskConfig = Field(TaskConfig(), description="what is asked and how answers look")
    data: DataConfig = Field(..., description="the data files")
    model: ModelConfig = Field(ModelConfig(), description="the base model")
    train: TrainConfig = Field(TrainConfig(), description="how the fine-tune is trained")
    eval: EvalConfig = Field(EvalConfig(), description="what is evaluated and how it is scored")
    gate: GateConfig = Field(GateConfig(), description="when a fine-tune ships")
    tracking: TrackingConfig = Field(
        TrackingConfig(), description="optional experiment tracking (MLflow)"
    )
    root: Path = Field(Path("."), exclude=True, description="folder of project.yaml (set on load)")

    @field_validator("name")
    @classmethod
    def _name_is_safe(cls, v: str) -> str:
        # The name becomes a registry entry and a folder name: no "..", no separators.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", v) or ".." in v:
            raise ValueError(
                "use letters, digits, '.', '_' or '-' (max 64), starting with a letter or digit, "
                "no '..'"
            )
        return v

    @model_validator(mode="after")
    def _absolute_paths(self) -> ProjectConfig:
        root = self.root
        if isinstance(self.task.tools, str):
            self.task.tools = _read_tools(root / self.task.tools)
        if not self.data.train.is_absolute():
            self.data.train = root / self.data.train
        for name in ("val", "test", "docs"):
            given = getattr(self.data, name)
            if given is not None and not given.is_absolute():
                setattr(self.data, name, root / given)
        uri = self.tracking.mlflow.uri
        if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            # SQLAlchemy reads sqlite:///x.db relative to the working directory; a project's
            # paths are relative to its own folder.
            self.tracking.mlflow.uri = "sqlite:///" + str(root / uri.removeprefix("sqlite:///"))
        return self

    @model_validator(mode="after")
    def _tools_defaults(self) -> ProjectConfig:
        # A tools task is scored on its calls: the defaults written for a labels task (label
        # accuracy as the primary metric) would grade nothing. Only what the file leaves unset.
        if self.task.type != "tools":
            return self
        given = self.eval.model_fields_set
        update: dict[str, Any] = {}
        if "graders" not in given:
            update["graders"] = list(TOOLS_GRADERS)
        if "primary_metric" not in given:
            update["primary_metric"] = TOOLS_PRIMARY
        if update:
            self.eval = self.eval.model_copy(update=update)
        return self

    @model_validator(mode="after")
    def _cross_section_rules(self, info: ValidationInfo) -> ProjectConfig:
        # Only a project file being loaded is held to them (see the module docstring).
        if not (info.context or {}).get(RULES_CONTEXT):
            return self
        for rule in CROSS_SECTION_RULES:
            problem = rule.check(self)
            if problem:
                # A custom error keeps pydantic's "Value error, " prefix out of the one line; the
                # message is passed as context so braces in it are not read as placeholders.
                raise PydanticCustomError("cross_section", "{problem}", {"problem": problem})
        return self

    @property
    def work_dir(self) -> Path:
        """Where the ladder writes splits, runs and reports for this project."""
        return self.root / ".tunewise"


def _read_tools(path: Path) -> list[dict[str, Any]]:
    """task.tools given as a file: the list of tool schemas it holds (a one-line error if not)."""
    try:
        tools = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not JSON: {exc.msg}") from None
    if isinstance(tools, dict) and isinstance(tools.get("tools"), list):
        tools = tools["tools"]  # {"tools": [...]}, as an OpenAI request body writes them
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ValueError(f"{path}: expected a JSON list of tool schemas")
    return tools


# --- cross-section rules ------------------------------------------------------------------------
# Each rule is one a later stage would otherwise fail on (or silently decide wrong), found from the
# config alone, so it is refused at load in one line that names both fields.

# The validation-context key under which load_project asks for the rules.
RULES_CONTEXT = "cross_section_rules"

_FINETUNED_FEWSHOT = "finetuned+fewshot"  # the runs trained with few-shot context


@dataclass(frozen=True)
class CrossSectionRule:
    """A rule between two fields of different sections, checked when project.yaml is loaded."""

    fields: tuple[str, str]
    summary: str  # what the rule requires, for docs/project-yaml.md
    check: Callable[[ProjectConfig], str | None]  # the one-line problem, or None


def _names(values: list[str]) -> str:
    return "[" + ", ".join(values) + "]"


def _evaluated(cfg: ProjectConfig) -> set[str]:
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


def _baselines_are_evaluated(cfg: ProjectConfig) -> str | None:
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


def _listed_variants_are_trained(cfg: ProjectConfig) -> str | None:
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


def _tool_metric_problem(cfg: ProjectConfig) -> str | None:
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


def _primary_metric_is_scored(cfg: ProjectConfig) -> str | None:
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


def _graders_fit_the_task(cfg: ProjectConfig) -> str | None:
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


def _rag_has_a_source(cfg: ProjectConfig) -> str | None:
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


def _reference_is_a_candidate(cfg: ProjectConfig) -> str | None:
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


def _format_validation(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if first["type"] == "cross_section":
        return f"{path}: {first['msg']}{more}"  # the message starts with the field it is about
    loc = ".".join(str(p) for p in first["loc"]) or "(root)"
    return f"{path}: {loc}: {first['msg']}{more}"


def load_project(path: str | Path, overrides: list[str] | None = None) -> ProjectConfig:
    """Read and validate ``project.yaml``; ``overrides`` are ``section.key=value`` strings."""
    path = Path(path)
    if path.is_dir():
        path = path / "project.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f"{path}:{line + 1}" if line is not None else str(path)
        raise UserError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except (RecursionError, ValueError) as exc:  # nested past Python's stack; a 5000-digit int
        raise UserError(f"{path}: invalid YAML: {_unreadable(exc)}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    for item in overrides or []:
        apply_override(raw, item)
    raw["root"] = path.parent.resolve()
    try:
        return ProjectConfig.model_validate(raw, context={RULES_CONTEXT: True})
    except ValidationError as err:
        raise UserError(_format_validation(path, err)) from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply ``train.lr=1e-4`` to a raw config dict; the value is parsed as YAML."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected key=value, e.g. train.lr=1e-4")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {item!r}: {part} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise UserError(f"--set {key}: invalid YAML value: {_unreadable(exc)}") from None


def _unreadable(exc: BaseException) -> str:
    """What stopped the YAML reader, in a few words (one line)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = str(getattr(exc, "problem", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__


def dump_project(cfg: ProjectConfig) -> dict[str, Any]:
    """The resolved config as plain JSON-able values (saved beside every run)."""
    return cfg.model_dump(mode="json")
