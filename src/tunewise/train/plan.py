"""Memory planner: how much accelerator (or CPU) memory a training run will need, before running it.

The estimate is a sum of parts, each a closed formula in the model's dimensions (read from
``config.json``, never from the weights, so a 70B plan costs nothing):

* **weights**: bytes per parameter by method and device (:mod:`tunewise.runtime.device`'s policy):
16-bit
  on GPU for LoRA, fp32 for full (under autocast), NF4 with
  double quantization (~4.13 bits) for the linear layers under QLoRA, fp32 on the CPU;
* **LoRA adapter**: ``r * (in + out)`` per targeted linear, kept in fp32 (PEFT upcasts adapters);
* **gradients** and **optimizer state**: only for trainable parameters. Full fine-tuning keeps
  fp32 weights, grads and AdamW moments (under bf16 autocast on a GPU,
  :mod:`tunewise.runtime.device`):
  16 bytes per parameter, the budget of "mixed-precision Adam"; LoRA pays 4 + 4 + 8 bytes per
  adapter parameter;
* **activations**: elements saved for backward per token and layer (calibrated against measured
  peak RSS of the 135M model on this project's CPU, see ``docs/plan.md``), times tokens
  (``batch * seq_len``) and layers; with gradient checkpointing only each layer's input is kept,
  plus one layer recomputed at a time. With a shared prefix of ``P`` tokens
  (``train.shared_prefix``) a batch runs ``P + batch * (seq_len - P)`` tokens, plus each row's
  attention keeping the prefix's keys and values;
* **logits**: ``tokens * vocab`` in a few copies (the 16/32-bit logits, the fp32 log-softmax and
  its gradient): for small models with big vocabularies this is the largest activation;
* **overhead**: the CUDA context and allocator slack on GPU; the Python/torch/transformers
  runtime on CPU.

It is an estimate: sums are upper-bound-ish (peaks of gradients and activations do not fully
overlap) and kernels differ between versions. Tests hold it to published 7B figures within 30%
and to this machine's measured peak RSS.
"""

from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunewise import paths
from tunewise.errors import UserError
from tunewise.runtime import device as device_policy
from tunewise.runtime.device import Placement
from tunewise.runtime.models import EMBEDDED
from tunewise.train.methods import LORA_PRESETS, METHODS, Method

Device = Literal["gpu", "cpu"]
GIB = 1024**3

# Dimensions of well-known checkpoints, so `tunewise plan --model meta-llama/Llama-2-7b-hf` works
# offline (config.json values as published on the Hub).
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-2-7b-hf": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        tie_word_embeddings=False,
    ),
    "meta-llama/Llama-2-13b-hf": dict(
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
        vocab_size=32000,
        tie_word_embeddings=False,
    ),
    "meta-llama/Llama-2-70b-hf": dict(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=32000,
        tie_word_embeddings=False,
    ),
    "meta-llama/Meta-Llama-3-8B": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
    ),
    "meta-llama/Llama-3.2-1B": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
    "meta-llama/Llama-3.2-3B": dict(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
    "mistralai/Mistral-7B-v0.1": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32000,
        tie_word_embeddings=False,
    ),
    "Qwen/Qwen2.5-7B": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
    "HuggingFaceTB/SmolLM2-135M-Instruct": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=24,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
}
# Aliases: the instruct/chat variants share the base model's dimensions.
_ALIASES = {
    "meta-llama/Llama-2-7b-chat-hf": "meta-llama/Llama-2-7b-hf",
    "meta-llama/Llama-2-13b-chat-hf": "meta-llama/Llama-2-13b-hf",
    "meta-llama/Meta-Llama-3-8B-Instruct": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Llama-3.1-8B": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Llama-3.2-1B-Instruct": "meta-llama/Llama-3.2-1B",
    "meta-llama/Llama-3.2-3B-Instruct": "meta-llama/Llama-3.2-3B",
    "mistralai/Mistral-7B-Instruct-v0.2": "mistralai/Mistral-7B-v0.1",
    "Qwen/Qwen2.5-7B-Instruct": "Qwen/Qwen2.5-7B",
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
}

# Common accelerators by memory size (GiB as the vendors' "GB" figures effectively are).
GPUS: list[tuple[str, float]] = [
    ("24 GB (RTX 3090/4090, A10, L4)", 24.0),
    ("48 GB (RTX A6000, L40S)", 48.0),
    ("80 GB (A100/H100 80GB)", 80.0),
]

# Activation elements saved for backward, per token and layer, as coefficients of the hidden
# size h, the MLP size i and the key/value width kv. Derived from the HF Llama forward (two fp32
# RMSNorms ~3h each, q/k/v/rope/repeat_kv/SDPA output and reshape ~12h, SwiGLU gate/up/silu/
# product 4i) and calibrated against measured peak RSS on this project's CPU: 25.4k fp32
# elements per token per layer for SmolLM2-135M with LoRA r=16 on all linears.
ACT_H, ACT_I, ACT_KV = 21.0, 4.0, 3.0
# A shared prefix runs once per batch, but every row's attention still reads its keys and values:
# the concatenated keys/values (2 kv) and their expansion to the query heads (2 q) per row.
ACT_PREFIX_KV, ACT_PREFIX_Q = 2.0, 2.0
# LoRA with dropout saves the dropped-out input of every adapted linear (+ its mask).
LORA_ACT_PER_INPUT = 1.25
# Copies of tokens*vocab in the loss: measured ~2.7 fp32 copies on CPU (logits, log-softmax,
# gradient); on GPU the 16-bit logits are upcast to fp32 before the loss.
LOGIT_BYTES = {"cpu": 12.0, "gpu": 14.0}
# NF4 (4 bits) + double-quantized absmax (8 bits per 64 weights + fp32 per 256 blocks).
NF4_BYTES_PER_PARAM = (4 + 8 / 64 + 32 / (64 * 256)) / 8
CUDA_CONTEXT_BYTES = 0.5 * GIB
ALLOCATOR_SLACK = 0.05  # fragmentation in the CUDA caching allocator
# Python + torch + transformers + peft + datasets resident before any tensor (measured 0.42 GiB
# for the imports alone; the trainer's data pipeline and logging add the rest).
CPU_RUNTIME_BYTES = 0.6 * GIB
# On the CPU, glibc's allocator keeps part of each step's freed activation memory resident, so peak
# RSS grows faster per token than the tensors alive at once (measured, SmolLM2-135M LoRA, 512 to
# 2048 tokens per batch: 4.6 MB/token marginal vs 3.4 MB/token of tensors; runs of the same
# 512-token batch vary by ~12%, so the factor sits between the extremes).
CPU_ACTIVATION_FACTOR = 1.2


@dataclass(frozen=True)
class ModelDims:
    """What the planner needs to know about a decoder-only transformer."""

    name: str
    source: str  # where the dimensions came from
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    head_dim: int
    gated_mlp: bool = True

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear in one layer, by the module names PEFT targets."""
        h, i = self.hidden_size, self.intermediate_size
        shapes = {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }
        if self.gated_mlp:
            shapes["gate_proj"] = (h, i)
        return shapes

    @property
    def linear_params(self) -> int:
        per_layer = sum(a * b for a, b in self.linears().values())
        return per_layer * self.num_hidden_layers

    @property
    def other_params(self) -> int:
        """Embeddings, the LM head when untied, and the norms (kept unquantized under QLoRA)."""
        emb = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else emb
        norms = (2 * self.num_hidden_layers + 1) * self.hidden_size
        return emb + head + norms

    @property
    def n_params(self) -> int:
        return self.linear_params + self.other_params


@dataclass
class MemoryPlan:
    """The estimate, part by part, in bytes; ``fits`` maps each common GPU to yes/no."""

    model: str
    source: str
    method: str
    device: str
    seq_len: int
    batch: int
    lora_r: int | None
    target_modules: str | None
    grad_checkpointing: bool
    shared_prefix: int  # tokens of the prefix run once per batch (0: none)
    n_params: int
    n_trainable: int
    parts: dict[str, int]
    total_bytes: int
    fits: list[dict[str, Any]] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able values (bytes, plus GiB for people)."""
        d = asdict(self)
        d["total_gib"] = round(self.total_gib, 2)
        d["parts_gib"] = {k: round(v / GIB, 3) for k, v in self.parts.items()}
        return d


def _dims_from_config(name: str, source: str, cfg: dict[str, Any]) -> ModelDims:
    # Most decoder configs use the Llama key names; GPT-2 style ones use n_embd/n_layer/n_head.
    h = cfg.get("hidden_size") or cfg.get("n_embd") or cfg.get("d_model")
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers")
    heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    vocab = cfg.get("vocab_size")
    if not (h and layers and heads and vocab):
        raise UserError(
            f"{source}: config.json lacks "
            "hidden_size/num_hidden_layers/num_attention_heads/vocab_size"
        )
    gated = cfg.get("model_type", "llama") not in {
        "gpt2",
        "gpt_neox",
        "gptj",
        "opt",
        "bloom",
        "falcon",
        "phi",
    }
    inter = cfg.get("intermediate_size") or cfg.get("n_inner") or cfg.get("ffn_dim") or 4 * h
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or h // heads
    tie = bool(cfg.get("tie_word_embeddings", not gated))
    return ModelDims(
        name=name,
        source=source,
        hidden_size=int(h),
        intermediate_size=int(inter),
        num_hidden_layers=int(layers),
        num_attention_heads=int(heads),
        num_key_value_heads=int(kv),
        vocab_size=int(vocab),
        tie_word_embeddings=tie,
        head_dim=int(head_dim),
        gated_mlp=gated,
    )


def _known(name: str) -> str | None:
    canonical = _ALIASES.get(name, name)
    lowered = {k.lower(): k for k in KNOWN_CONFIGS}
    return lowered.get(canonical.lower()) or lowered.get(_ALIASES.get(name.lower(), "").lower())


def model_dims(model: str | Path) -> ModelDims:
    """Dimensions of a local checkpoint dir, a built-in model, or a hub id (offline table first)."""
    name = str(model)
    local = Path(name).expanduser()
    if local.is_dir():
        cfg_path = local / "config.json"
        if not cfg_path.is_file():
            raise UserError(f"{local}: no config.json (not a Hugging Face checkpoint directory)")
        return _dims_from_config(name, str(cfg_path), json.loads(cfg_path.read_text()))

    candidates: list[Path] = []
    if name in EMBEDDED:
        candidates.append(paths.models_dir() / name / "config.json")
    elif "/" in name:
        candidates.append(paths.models_dir() / "hub" / name.replace("/", "--") / "config.json")
    for cfg_path in candidates:
        if cfg_path.is_file():  # a converted or pulled copy: its config is the truth
            return _dims_from_config(name, str(cfg_path), json.loads(cfg_path.read_text()))

    key = _known(name)
    if key is not None:
        return _dims_from_config(name, f"built-in table ({key})", KNOWN_CONFIGS[key])

    if "/" in name and not name.startswith((".", "/")) and _hub_reachable():
        try:  # one small file, never weights
            from huggingface_hub import hf_hub_download  # lazy: only a hub model's plan needs it

            cfg_file = hf_hub_download(name, "config.json")
            return _dims_from_config(
                name, f"hub ({name}/config.json)", json.loads(Path(cfg_file).read_text())
            )
        except Exception as exc:  # offline, gated or missing: the user needs one line
            known = ", ".join(sorted(KNOWN_CONFIGS))
            raise UserError(
                f"model '{name}': config.json not available offline ({type(exc).__name__}); "
                f"pass a local checkpoint dir or one of: {known}"
            ) from None
    known = ", ".join(sorted(KNOWN_CONFIGS))
    raise UserError(
        f"model '{name}': not a local checkpoint dir, built-in name, "
        f"or hub id known offline ({known})"
    )


def _hub_reachable() -> bool:
    """False offline, at once: huggingface_hub would otherwise retry for ~20 s."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError:
        return False
    return True


def lora_params(dims: ModelDims, r: int, target_modules: str | list[str] = "all-linear") -> int:
    """Trainable parameters of a LoRA adapter: ``r * (in + out)`` per targeted linear."""
    names = (
        LORA_PRESETS[target_modules] if isinstance(target_modules, str) else tuple(target_modules)
    )
    shapes = dims.linears()
    unknown = [n for n in names if n not in shapes and n != "gate_proj"]
    if unknown:
        raise UserError(
            f"target_modules: unknown module(s) {', '.join(unknown)} (known: {', '.join(shapes)})"
        )
    per_layer = sum(r * (shapes[n][0] + shapes[n][1]) for n in names if n in shapes)
    return per_layer * dims.num_hidden_layers


def _activation_elems_per_token_layer(
    dims: ModelDims, method: str, targets: tuple[str, ...], dropout: bool
) -> float:
    h, i, kv = dims.hidden_size, dims.intermediate_size, dims.kv_dim
    mlp = ACT_I * i if dims.gated_mlp else (ACT_I - 1) * i
    elems = ACT_H * h + mlp + ACT_KV * kv
    if method != "full" and dropout:
        shapes = dims.linears()
        elems += sum(LORA_ACT_PER_INPUT * shapes[n][0] for n in targets if n in shapes)
    return elems


def _check_plan_args(
    method: str,
    device: str,
    seq_len: int,
    batch: int,
    lora_r: int,
    answer_tokens: int | None,
    shared_prefix: int,
) -> None:
    if method not in METHODS:
        raise UserError(f"--method {method!r}: expected lora, qlora or full")
    if device not in ("gpu", "cpu"):
        raise UserError(f"--device {device!r}: expected gpu or cpu")
    if seq_len < 1 or batch < 1 or lora_r < 1:
        raise UserError("--seq-len, --batch and --r must be positive")
    if answer_tokens is not None and not 1 <= answer_tokens <= seq_len:
        raise UserError(
            f"--answer-tokens {answer_tokens}: must be between 1 and --seq-len ({seq_len})"
        )
    if not 0 <= shared_prefix < seq_len:
        raise UserError(
            f"--shared-prefix {shared_prefix}: must be at least 0 and below --seq-len ({seq_len})"
        )


def _state_parts(
    dims: ModelDims,
    method: str,
    placement: Placement,
    weight_bytes: float,
    lora_r: int,
    target_modules: str | list[str],
    targets: tuple[str, ...],
    parts: dict[str, float],
    notes: list[str],
) -> int:
    """Weights, adapter, gradients and optimizer state into ``parts``; returns trainable params."""
    n = dims.n_params
    if method == "full":
        # AdamW keeps its two moments in the weights' dtype; the Trainer keeps no extra copy.
        parts["weights"] = weight_bytes * n
        parts["gradients"] = weight_bytes * n
        parts["optimizer"] = 2 * weight_bytes * n
        mixed = f" under {placement.autocast} autocast" if placement.autocast else ""
        notes.append(
            f"full: {placement.dtype} weights, grads and AdamW moments{mixed}, "
            f"{4 * weight_bytes:g} bytes/param"
        )
        return n
    n_trainable = lora_params(dims, lora_r, target_modules)
    if method == "qlora":
        parts["weights"] = (
            NF4_BYTES_PER_PARAM * dims.linear_params + weight_bytes * dims.other_params
        )
        notes.append(
            "qlora: linears in NF4 with double quantization (~4.13 bits), "
            "embeddings/head/norms unquantized"
        )
    else:
        parts["weights"] = weight_bytes * n
    # PEFT keeps adapters in fp32 even on a 16-bit base (autocast_adapter_dtype)
    parts["lora_adapter"] = 4.0 * n_trainable
    parts["gradients"] = 4.0 * n_trainable
    parts["optimizer"] = 8.0 * n_trainable
    notes.append(
        f"{method}: adapter r={lora_r} on {','.join(targets)}, "
        "fp32 adapter + grads + AdamW moments (16 bytes/param)"
    )
    return n_trainable


def _activation_bytes(
    dims: ModelDims,
    method: str,
    targets: tuple[str, ...],
    dropout: bool,
    act_bytes: float,
    tokens: int,
    batch: int,
    shared: int,
    grad_checkpointing: bool,
    notes: list[str],
) -> float:
    """Activations kept for backward over ``tokens`` (before the CPU allocator factor)."""
    per_layer = (
        _activation_elems_per_token_layer(dims, method, targets, dropout) * act_bytes * tokens
    )
    if shared:
        per_layer += (
            (ACT_PREFIX_KV * dims.kv_dim + ACT_PREFIX_Q * dims.q_dim) * act_bytes * batch * shared
        )
    if grad_checkpointing:
        # each layer keeps its input; backward recomputes one layer at a time
        notes.append("gradient checkpointing: layer inputs kept, one layer recomputed at a time")
        return dims.num_hidden_layers * dims.hidden_size * act_bytes * tokens + per_layer
    return dims.num_hidden_layers * per_layer


def _train_placement(device: str, method: str) -> tuple[Placement, float, float]:
    """The placement training would choose, its weight bytes and its activation bytes."""
    # Byte sizes from the policy training itself follows (tunewise.runtime.device), for a typical
    # bf16
    # GPU or a CPU: 16-bit frozen weights for LoRA on a GPU, fp32 weights under autocast for full.
    caps = device_policy.TYPICAL_GPU if device == "gpu" else device_policy.TYPICAL_CPU
    placement = device_policy.choose(caps, purpose="train", method=method)
    weight_bytes = float(device_policy.DTYPE_BYTES[placement.dtype])
    act_bytes = 2.0 if placement.autocast else weight_bytes
    return placement, weight_bytes, act_bytes


def _logit_bytes(
    dims: ModelDims,
    device: str,
    batch: int,
    tokens: int,
    shared: int,
    answer_tokens: int | None,
    notes: list[str],
) -> float:
    # the prefix pass computes no logits
    logit_positions = batch * answer_tokens if answer_tokens is not None else tokens - shared
    if answer_tokens is not None:
        notes.append(
            f"logits at the {answer_tokens} labelled positions per example only (tunewise's loss)"
        )
    return LOGIT_BYTES[device] * logit_positions * dims.vocab_size


def _tokens_note(shared: int, batch: int, seq_len: int, tokens: int) -> str:
    if shared:
        return (
            f"shared prefix: {shared} tokens run once per batch, so activations are for "
            f"{shared} + {batch} x {seq_len - shared} = {tokens} tokens (not "
            f"{batch * seq_len}), SDPA attention (no seq^2 term)"
        )
    return (
        f"activations for batch {batch} x seq_len {seq_len} = {tokens} tokens, "
        "SDPA attention (no seq^2 term)"
    )


def _add_overhead(parts: dict[str, float], device: str, notes: list[str]) -> None:
    if device == "gpu":
        subtotal = sum(parts.values())
        parts["overhead"] = CUDA_CONTEXT_BYTES + ALLOCATOR_SLACK * subtotal
        notes.append("overhead: CUDA context 0.5 GiB + 5% allocator slack")
    else:
        parts["overhead"] = CPU_RUNTIME_BYTES
        notes.append("overhead: Python/torch/transformers runtime, 0.6 GiB resident")


def _gpu_fits(total: int) -> list[dict[str, Any]]:
    return [
        {
            "gpu": label,
            "memory_gib": gib,
            "fits": total <= gib * GIB,
            "headroom_gib": round(gib - total / GIB, 2),
        }
        for label, gib in GPUS
    ]


def plan(
    model: str | Path,
    *,
    method: Method = "lora",
    seq_len: int = 512,
    batch: int = 1,
    lora_r: int = 16,
    target_modules: str | list[str] = "all-linear",
    lora_dropout: float = 0.05,
    grad_checkpointing: bool = False,
    device: Device = "gpu",
    answer_tokens: int | None = None,
    shared_prefix: int = 0,
) -> MemoryPlan:
    """Estimate peak training memory for ``model`` (see the module docstring for the formulas).

    ``device="gpu"`` assumes bf16 autocast (16-bit weights for LoRA/full, NF4 for QLoRA);
    ``device="cpu"`` assumes what tunewise does on a CPU: fp32 everywhere (NF4 linears for QLoRA).
    ``answer_tokens``: labelled tokens per example. tunewise computes logits only where there are
    labels, so the logits term shrinks from ``seq_len`` to this many positions per example; None
    plans for logits at every position (what trainers that compute the full loss need).
    ``shared_prefix``: tokens every example of a batch starts with (the system prompt), which
    ``train.shared_prefix`` runs once per batch instead of once per row.
    """
    _check_plan_args(method, device, seq_len, batch, lora_r, answer_tokens, shared_prefix)
    dims = model_dims(model)
    placement, weight_bytes, act_bytes = _train_placement(device, method)
    # Tokens the model runs per batch: a shared prefix once, each row's own tokens per row (a
    # batch of one has nothing to share and runs the plain path).
    shared = shared_prefix if batch > 1 else 0
    tokens = shared + batch * (seq_len - shared)
    parts: dict[str, float] = {}
    notes: list[str] = []

    targets: tuple[str, ...] = (
        LORA_PRESETS[target_modules] if isinstance(target_modules, str) else tuple(target_modules)
    )
    n_trainable = _state_parts(
        dims, method, placement, weight_bytes, lora_r, target_modules, targets, parts, notes
    )
    parts["activations"] = _activation_bytes(
        dims,
        method,
        targets,
        lora_dropout > 0,
        act_bytes,
        tokens,
        batch,
        shared,
        grad_checkpointing,
        notes,
    )
    parts["logits"] = _logit_bytes(dims, device, batch, tokens, shared, answer_tokens, notes)
    if device == "cpu":
        parts["activations"] *= CPU_ACTIVATION_FACTOR
        parts["logits"] *= CPU_ACTIVATION_FACTOR
    notes.append(_tokens_note(shared, batch, seq_len, tokens))
    _add_overhead(parts, device, notes)

    total = int(sum(parts.values()))
    return MemoryPlan(
        model=dims.name,
        source=dims.source,
        method=method,
        device=device,
        seq_len=seq_len,
        batch=batch,
        lora_r=None if method == "full" else lora_r,
        target_modules=None
        if method == "full"
        else (target_modules if isinstance(target_modules, str) else ",".join(target_modules)),
        grad_checkpointing=grad_checkpointing,
        shared_prefix=shared,
        n_params=dims.n_params,
        n_trainable=n_trainable,
        parts={k: int(v) for k, v in parts.items()},
        total_bytes=total,
        fits=_gpu_fits(total) if device == "gpu" else [],
        assumptions=notes,
    )


def min_gpus_zero3(p: MemoryPlan, gpu_gib: float = 80.0) -> int | None:
    """GPUs of ``gpu_gib`` needed when weights, grads and optimizer state are sharded (FSDP/ZeRO-3).

    Activations, logits and the CUDA context stay whole on every GPU. None when even those do not
    fit on one GPU.
    """
    sharded = sum(p.parts.get(k, 0) for k in ("weights", "lora_adapter", "gradients", "optimizer"))
    local = p.parts.get("activations", 0) + p.parts.get("logits", 0)
    room = (gpu_gib * GIB - CUDA_CONTEXT_BYTES) / (1 + ALLOCATOR_SLACK) - local
    if room <= 0:
        return None
    return max(1, math.ceil(sharded / room))
