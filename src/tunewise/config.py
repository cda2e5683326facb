"""``project.yaml``: every default and every validation in one place.

A project names its data, its task and how each rung of the ladder runs. Paths in the file are
relative to the file's own folder. Field descriptions double as documentation
(``tunewise init`` writes them as comments).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunewise.errors import UserError


class _Section(BaseModel):
    # Unknown keys are typos, and a typo in a training config silently costs a day.
    model_config = ConfigDict(extra="forbid")


class TaskConfig(_Section):
    type: Literal["labels", "text", "json"] = Field(
        "labels",
        description=(
            "labels: outputs are categorical (one or more fields); text: free text; "
            "json: JSON objects"
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


class SplitConfig(_Section):
    val: float = Field(
        0.1,
        ge=0.0,
        lt=0.5,
        description="fraction held out for validation (at least 10% is advised)",
    )
    test: float = Field(0.1, ge=0.0, lt=0.5, description="fraction sealed for the final test")
    seed: int = 0


class DataConfig(_Section):
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
    base: str = Field(
        "smollm2-135m-instruct", description="built-in name, local HF directory or hub id"
    )
    trust_remote_code: bool = False
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
        from tunewise.runtime.device import DEVICE_HELP, DEVICE_PATTERN

        if not DEVICE_PATTERN.fullmatch(v):
            raise ValueError(f"expected {DEVICE_HELP}, got {v!r}")
        return v


LoraTarget = Literal["all-linear", "qv", "attn", "mlp"]


class TrainConfig(_Section):
    method: Literal["lora", "qlora", "full"] = "lora"
    lr: float | None = Field(None, gt=0, description="default 2e-4 for lora/qlora, 2e-5 for full")
    epochs: float = Field(
        2.0, gt=0, description="1-3 is advised; outside that range tunewise warns"
    )
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_steps: int | None = Field(
        None, ge=1, description="stop after this many optimizer steps (overrides epochs)"
    )
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = 0.0
    lora_r: int = Field(16, ge=1)
    lora_alpha: int | None = Field(None, ge=1, description="default 2*r")
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: LoraTarget | list[str] = "all-linear"
    train_on: Literal["all", "last"] = Field(
        "all", description="loss on every assistant turn, or the last only"
    )
    overlong: Literal["drop", "truncate", "error"] = "drop"
    eval_every: int = Field(20, ge=1, description="validation loss every N optimizer steps")
    save_every: int = Field(50, ge=1, description="checkpoint every N optimizer steps")
    early_stopping_patience: int = Field(3, ge=1)
    overfit_sample: int = Field(
        8, ge=0, description="validation prompts generated at each eval for the repetition check"
    )
    overfit_repetition_threshold: float = Field(0.3, gt=0, le=1)
    group_by_length: bool = True
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
    seed: int = 0

    @field_validator("variants")
    @classmethod
    def _variants_once(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("list each context variant once, at least one")
        return v

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
    k: int = Field(4, ge=1)
    selection: Literal["random", "similar"] = "similar"


class RagConfig(_Section):
    k: int = Field(3, ge=1)
    sources: list[Literal["docs", "train"]] = ["docs", "train"]
    hybrid: bool = Field(True, description="FAISS dense retrieval fused with BM25")


class ExternalConfig(_Section):
    name: str
    base_url: str
    model: str
    api_key_env: str | None = Field(None, description="environment variable holding the API key")


class EvalConfig(_Section):
    candidates: list[str] = ["prompt", "fewshot", "rag", "finetuned"]
    fewshot: FewShotConfig = FewShotConfig()
    rag: RagConfig = RagConfig()
    external: list[ExternalConfig] = []
    graders: list[Literal["exact", "format", "label", "json", "judge"]] = [
        "format",
        "label",
        "exact",
    ]
    primary_metric: str = Field("accuracy", description="the metric the gate decides on")
    constrained: bool = Field(
        True, description="also score labels by log-likelihood (labels tasks)"
    )
    classical: bool = Field(
        True,
        description="also run tfidf and probe: scikit-learn classifiers, no LLM (labels tasks)",
    )
    max_new_tokens: int | Literal["auto"] = "auto"
    batch_size: int = Field(16, ge=1)
    limit: int | None = Field(
        None, ge=1, description="evaluate on the first N validation items only"
    )
    judge_model: str | None = Field(
        None, description="local model or external name for the LLM judge"
    )


class CostConfig(_Section):
    """The advisor's cost model, for the cost per 1,000 requests of a non-inferiority verdict."""

    requests_per_day: float = Field(..., gt=0)
    tokens_per_request: float = Field(..., gt=0, description="input + output tokens")
    api_price_per_mtok: float = Field(
        ..., gt=0, description="USD per million tokens of the API reference (blended)"
    )
    gpu_price_per_hour: float = Field(..., gt=0, description="USD per hour of the serving GPU")
    gpu_hours_per_day: float = Field(24.0, gt=0, le=24)


class GateConfig(_Section):
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
    alpha: float = Field(0.05, gt=0, lt=1)
    delta: float = Field(
        0.02, ge=0, description="minimum margin on the primary metric over every baseline"
    )
    baselines: list[str] = ["prompt", "fewshot", "rag"]
    guards: dict[str, float] = Field(
        default_factory=lambda: {"format_compliance": 0.02},
        description=(
            "metric -> tolerated drop versus the best baseline; format compliance is always a guard"
        ),
    )

    @model_validator(mode="after")
    def _reference_for_non_inferiority(self) -> GateConfig:
        if self.mode == "non_inferiority" and not self.reference:
            raise ValueError("gate.mode non_inferiority needs gate.reference (a candidate name)")
        return self


class MlflowConfig(_Section):
    uri: str | None = Field(
        None,
        description="MLflow tracking URI: http://host:5000, or sqlite:///mlflow.db (relative to "
        "this file); the environment variable TUNEWISE_MLFLOW_URI overrides it",
    )
    experiment: str | None = Field(None, description="experiment name (default: the project name)")


class TrackingConfig(_Section):
    mlflow: MlflowConfig = Field(
        MlflowConfig(),
        description="optional (pip install 'tunewise[mlflow]'): training runs, the ladder's "
        "results and registry aliases mirrored to MLflow",
    )


class ProjectConfig(_Section):
    name: str
    task: TaskConfig = TaskConfig()
    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    gate: GateConfig = GateConfig()
    tracking: TrackingConfig = TrackingConfig()
    root: Path = Field(Path("."), exclude=True, description="folder of project.yaml (set on load)")

    @field_validator("name")
    @classmethod
    def _name_is_safe(cls, v: str) -> str:
        import re

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

    @property
    def work_dir(self) -> Path:
        """Where the ladder writes splits, runs and reports for this project."""
        return self.root / ".tunewise"


def _format_validation(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(root)"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{path}: {loc}: {first['msg']}{more}"


def load_project(path: str | Path, overrides: list[str] | None = None) -> ProjectConfig:
    """Read and validate ``project.yaml``; ``overrides`` are ``section.key=value`` strings."""
    path = Path(path)
    if path.is_dir():
        path = path / "project.yaml"
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f"{path}:{line + 1}" if line is not None else str(path)
        raise UserError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    for item in overrides or []:
        apply_override(raw, item)
    raw["root"] = path.parent.resolve()
    try:
        return ProjectConfig.model_validate(raw)
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
    node[parts[-1]] = yaml.safe_load(value)


def dump_project(cfg: ProjectConfig) -> dict[str, Any]:
    """The resolved config as plain JSON-able values (saved beside every run)."""
    return cfg.model_dump(mode="json")
