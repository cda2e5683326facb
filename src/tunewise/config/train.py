"""The ``train`` section: how the fine-tune is trained (the ladder's last rung)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from tunewise.config.section import _Section

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
