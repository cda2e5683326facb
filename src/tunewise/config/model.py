"""The ``model`` section: the base model, where it runs and in which number format."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from tunewise.config.section import _Section

# The grammar of ``model.device`` (and ``--device``): owned here, where the field is validated;
# the device policy (:mod:`tunewise.runtime.device`) reads it from here.
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps"


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
