"""Where a model runs and in which number format: one policy for training, inference and export.

:func:`choose` is a pure function of the machine's :class:`Capabilities` and the user's requests
(``model.device``, ``model.dtype``, ``train.precision``, ``serve --device``); :func:`detect` reads
the capabilities once, and :func:`for_project` reads a project's requests. Every stage that loads
a model (the trainer, the Engine behind evaluation, the judge, constrained scoring and the server,
the merged export) and the memory planner take their :class:`Placement` from here, so a bf16 GPU
run and its evaluation cannot disagree on the model they measure.

The policy, and why:

* **Device**: a CUDA GPU when one is visible (``cuda:LOCAL_RANK`` under ``accelerate launch``), else
  Apple's ``mps``, else the CPU. Weights are placed on the device at load time
  (``device_map={"": device}``), so an 8B model never sits in CPU memory first; under FSDP or
  DeepSpeed the launcher shards and places them instead.
* **Weights' dtype**: bf16 on a GPU that has it (Ampere and newer), fp16 on older GPUs; fp32 on the
  CPU, where bf16 is opt-in (``train.precision: bf16``) because its validation loss reads higher.
  Full fine-tuning keeps fp32 weights under 16-bit autocast: AdamW on bf16 weights loses small
  updates to rounding, and fp32 weights + fp32 grads + two fp32 moments are the same 16 bytes a
  parameter that "mixed-precision Adam" costs. A merged export runs on the CPU (a merge is
  memory-bound) in the checkpoint's own dtype, so a bf16 base exports to a bf16 checkpoint of the
  same size.
* **4-bit NF4** (QLoRA, ``serve --4bit``) through bitsandbytes, on CUDA or the CPU (bitsandbytes
  0.50 runs it there); its matmuls run in bf16 (fp16 on GPUs without bf16).
* **Attention**: PyTorch's SDPA by default; ``flash_attention_2`` when the ``flash-attn`` package is
  installed and the weights are 16-bit on an Ampere-or-newer GPU (what that kernel supports).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from tunewise.config.model import DEVICE_HELP, DEVICE_PATTERN
from tunewise.errors import UserError

Purpose = Literal["train", "infer", "export"]
DTYPES = ("float32", "bfloat16", "float16")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Capabilities:
    """What this machine offers. Tests build these by hand; :func:`detect` reads the real ones."""

    cuda_devices: int = 0
    cuda_bf16: bool = False  # bf16 matmuls on the GPU (compute capability 8.0+)
    cuda_capability: tuple[int, int] | None = None
    cuda_name: str | None = None
    mps: bool = False
    bitsandbytes: bool = False
    flash_attn: bool = False

    @property
    def cuda(self) -> bool:
        return self.cuda_devices > 0


# What the planner assumes for "a GPU" (an Ampere-or-newer CUDA card) and for "the CPU".
TYPICAL_GPU = Capabilities(
    cuda_devices=1, cuda_bf16=True, cuda_capability=(8, 0), cuda_name="typical", bitsandbytes=True
)
TYPICAL_CPU = Capabilities(bitsandbytes=True)


@dataclass(frozen=True)
class Placement:
    """The decision: where the weights live and in which dtype, and how the math runs."""

    device: str  # torch device string: "cpu", "cuda:0", "mps"
    dtype: str  # dtype of the weights as loaded (the unquantized ones under 4-bit)
    quantize_4bit: bool  # linears in NF4 through bitsandbytes
    compute_dtype: str  # dtype of the 4-bit layers' matmuls (unused without 4-bit)
    autocast: Literal["bf16", "fp16"] | None  # training's mixed precision; None: weights' dtype
    attn_implementation: str  # "sdpa" | "flash_attention_2"
    place_at_load: bool  # load straight onto `device`; False when a launcher shards (FSDP/ZeRO-3)
    reasons: tuple[str, ...] = field(default=())

    @property
    def kind(self) -> str:
        """The device type without its index: "cpu", "cuda" or "mps"."""
        return self.device.split(":")[0]

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`tunewise.runtime.models.load_model` for this placement."""
        return {
            "dtype": self.dtype,
            "quantize_4bit": self.quantize_4bit,
            "compute_dtype": self.compute_dtype,
            "device_map": {"": self.device} if self.place_at_load else None,
            # None lets transformers take SDPA and fall back to eager for a model without it.
            "attn_implementation": None
            if self.attn_implementation == "sdpa"
            else self.attn_implementation,
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return d


def _half(caps: Capabilities) -> str:
    return "bfloat16" if caps.cuda_bf16 else "float16"


def _pick_device(caps: Capabilities, requested: str, local_rank: int, where: str) -> str:
    if not DEVICE_PATTERN.fullmatch(requested):
        raise UserError(f"{where}={requested!r}: expected {DEVICE_HELP}")
    if requested == "auto":
        if caps.cuda:
            requested = "cuda"
        elif caps.mps:
            return "mps"
        else:
            return "cpu"
    if requested == "cpu":
        return "cpu"
    if requested == "mps":
        if not caps.mps:
            raise UserError(f"{where}=mps: Apple's Metal (mps) backend is not available here")
        return "mps"
    if not caps.cuda:
        raise UserError(
            f"{where}={requested}: no CUDA GPU is visible (torch.cuda.is_available() is False)"
        )
    index = int(requested.split(":")[1]) if ":" in requested else local_rank
    if index >= caps.cuda_devices:
        raise UserError(
            f"{where}={requested}: GPU {index} requested, {caps.cuda_devices} visible"
            + (f" (LOCAL_RANK={local_rank})" if ":" not in requested else "")
        )
    return f"cuda:{index}"


def _check_4bit(caps: Capabilities, kind: str) -> None:
    if kind == "mps":
        raise UserError("4-bit NF4 (QLoRA, --4bit) runs on CUDA or the CPU, not on mps")
    if not caps.bitsandbytes:
        raise UserError("4-bit NF4 (QLoRA, --4bit) needs bitsandbytes: pip install bitsandbytes")


def _weights_dtype(
    caps: Capabilities,
    kind: str,
    *,
    purpose: Purpose,
    method: str | None,
    dtype: str,
    precision: str,
    stored_dtype: str | None,
    reasons: list[str],
) -> str:
    if dtype != "auto":
        if dtype not in DTYPES:
            raise UserError(f"model.dtype={dtype!r}: expected auto, {', '.join(DTYPES)}")
        if dtype == "bfloat16" and kind == "cuda" and not caps.cuda_bf16:
            raise UserError("model.dtype=bfloat16: this GPU has no bf16; use float16 or auto")
        if dtype == "float16" and purpose == "train" and method == "full":
            raise UserError(
                "model.dtype=float16 with train.method=full: fp16 weights cannot be trained "
                "directly (use auto: fp32 weights under fp16 autocast, or bfloat16)"
            )
        reasons.append(f"dtype {dtype}: requested")
        return dtype
    if purpose == "export":
        own = stored_dtype if stored_dtype in DTYPES else "float32"
        reasons.append(f"dtype {own}: the checkpoint's own, so the merged model keeps its size")
        return own
    if purpose == "train" and precision == "fp32":
        reasons.append("dtype float32: train.precision=fp32")
        return "float32"
    if kind == "cuda":
        if purpose == "train" and method == "full":
            reasons.append("dtype float32: full fine-tuning keeps fp32 weights under autocast")
            return "float32"
        half = _half(caps)
        reasons.append(f"dtype {half}: " + ("bf16 GPU" if caps.cuda_bf16 else "GPU without bf16"))
        return half
    if kind == "mps" and purpose == "infer":
        reasons.append("dtype float16: inference on mps")
        return "float16"
    reasons.append(f"dtype float32: {kind} (bf16 is opt-in through train.precision)")
    return "float32"


def _autocast(
    caps: Capabilities, kind: str, weights: str, *, method: str | None, precision: str
) -> Literal["bf16", "fp16"] | None:
    if precision == "fp32":
        return None
    if precision == "bf16":
        if kind == "cuda" and not caps.cuda_bf16:
            raise UserError("train.precision=bf16: this GPU has no bf16; use auto (fp16)")
        # QLoRA on a CPU computes its 4-bit layers in bf16 itself; autocast around them fails.
        return None if kind == "cpu" and method == "qlora" else "bf16"
    if kind != "cuda":
        return None
    if weights == "float16":
        return "fp16"
    if weights == "bfloat16":
        return "bf16"
    return "bf16" if caps.cuda_bf16 else "fp16"


def choose(
    caps: Capabilities,
    *,
    purpose: Purpose,
    method: str | None = None,
    quantize_4bit: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    precision: str = "auto",
    stored_dtype: str | None = None,
    local_rank: int = 0,
    sharded: bool = False,
    where: str = "model.device",
) -> Placement:
    """The placement for ``purpose`` on a machine with ``caps``. Pure: reads nothing else.

    ``method`` (lora | qlora | full) and ``precision`` (train.precision) matter for training;
    ``quantize_4bit`` asks for an NF4 base outside training (``serve --4bit``); ``stored_dtype``
    is the checkpoint's own dtype, which a merged export keeps; ``local_rank`` picks the GPU of
    this process under ``accelerate launch``; ``sharded`` says FSDP or DeepSpeed places the
    weights. Raises :class:`UserError` for a request this machine cannot honour.
    """
    reasons: list[str] = []
    if purpose == "export" and device == "auto":
        # Merging adds one low-rank product per layer: memory-bound, and the CPU's RAM holds
        # checkpoints that one GPU cannot.
        kind_device = "cpu"
        reasons.append("device cpu: a merge is memory-bound")
    else:
        kind_device = _pick_device(caps, device, local_rank, where)
        reasons.append(f"device {kind_device}: " + ("requested" if device != "auto" else "auto"))
    kind = kind_device.split(":")[0]
    four_bit = (quantize_4bit or method == "qlora") and purpose != "export"
    if four_bit:
        _check_4bit(caps, kind)
    weights = _weights_dtype(
        caps,
        kind,
        purpose=purpose,
        method=method,
        dtype=dtype,
        precision=precision,
        stored_dtype=stored_dtype,
        reasons=reasons,
    )
    compute = weights if weights != "float32" else ("bfloat16" if kind == "cpu" else _half(caps))
    autocast = (
        _autocast(caps, kind, weights, method=method, precision=precision)
        if purpose == "train"
        else None
    )
    if purpose == "train":
        reasons.append(f"autocast {autocast or 'off'}: train.precision={precision}")
    attn = "sdpa"
    ampere = caps.cuda_capability is not None and caps.cuda_capability >= (8, 0)
    if caps.flash_attn and kind == "cuda" and ampere and weights != "float32":
        attn = "flash_attention_2"
        reasons.append("attention flash_attention_2: flash-attn installed, 16-bit weights")
    return Placement(
        device=kind_device,
        dtype=weights,
        quantize_4bit=four_bit,
        compute_dtype=compute,
        autocast=autocast,
        attn_implementation=attn,
        place_at_load=kind != "cpu" and not sharded,
        reasons=tuple(reasons),
    )


# --- the impure edges: read the machine, a project, a checkpoint ---------------------------------


@lru_cache(maxsize=1)
def detect() -> Capabilities:
    """This machine's capabilities (read once per process)."""
    import torch  # lazy: torch, ~1 s to import; the device grammar and policy need none

    cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    capability = name = None
    bf16 = False
    if cuda_devices:
        capability = tuple(torch.cuda.get_device_capability(0))
        name = torch.cuda.get_device_name(0)
        bf16 = bool(torch.cuda.is_bf16_supported())
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return Capabilities(
        cuda_devices=cuda_devices,
        cuda_bf16=bf16,
        cuda_capability=capability,  # type: ignore[arg-type]
        cuda_name=name,
        mps=mps,
        bitsandbytes=importlib.util.find_spec("bitsandbytes") is not None,
        flash_attn=importlib.util.find_spec("flash_attn") is not None,
    )


def launcher_rank() -> tuple[int, bool]:
    """(LOCAL_RANK, whether FSDP or DeepSpeed shards the model) from accelerate's environment."""
    sharded = any(
        os.environ.get(k, "").lower() == "true"
        for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")
    )
    return int(os.environ.get("LOCAL_RANK", "0")), sharded


def for_project(
    cfg: Any,
    purpose: Purpose,
    *,
    method: str | None = None,
    quantize_4bit: bool = False,
    caps: Capabilities | None = None,
) -> Placement:
    """:func:`choose` with a project's ``model.device``, ``model.dtype`` and ``train.precision``."""
    local_rank, sharded = launcher_rank() if purpose == "train" else (0, False)
    return choose(
        caps or detect(),
        purpose=purpose,
        method=method or (cfg.train.method if purpose == "train" else None),
        quantize_4bit=quantize_4bit,
        device=cfg.model.device,
        dtype=cfg.model.dtype,
        precision=cfg.train.precision,
        local_rank=local_rank,
        sharded=sharded,
    )


def stored_dtype(model_dir: Path) -> str | None:
    """The dtype a checkpoint's config.json records (``dtype``, or the older ``torch_dtype``)."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    value = cfg.get("dtype") or cfg.get("torch_dtype")
    return str(value) if value in DTYPES else None


def where_is(model: Any) -> dict[str, Any]:
    """Where a loaded model actually is: its parameters' devices and floating dtypes, counted.

    Under 4-bit the packed NF4 weights are counted apart (``nf4_elements``); the dtype reported
    is the one most floating-point parameters (by element count) have.
    """
    devices: dict[str, int] = {}
    dtypes: dict[str, int] = {}
    nf4 = 0
    for p in model.parameters():
        devices[str(p.device)] = devices.get(str(p.device), 0) + p.numel()
        if type(p).__name__ == "Params4bit":  # bitsandbytes' packed NF4 weights
            nf4 += p.numel()
        elif p.is_floating_point():
            name = str(p.dtype).removeprefix("torch.")
            dtypes[name] = dtypes.get(name, 0) + p.numel()
    return {
        "device": max(devices, key=devices.__getitem__) if devices else None,
        "dtype": max(dtypes, key=dtypes.__getitem__) if dtypes else None,
        "devices": devices,
        "dtypes": dtypes,
        "nf4_elements": nf4,  # packed: two 4-bit weights per uint8 element
    }
