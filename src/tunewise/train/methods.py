"""The fine-tuning methods and the LoRA target-module presets, named once.

The trainer (which builds the adapter), the memory planner (which counts its parameters) and the
ladder (which checks ``--methods``) all read these names from here. A module of its own rather
than part of :mod:`tunewise.train.phases`: the planner and the ladder need the vocabulary, not
the run's phase records. The names themselves are the config's (``Method``, ``LoraTarget`` in
:mod:`tunewise.config`, which validates them). Plain data only: importing it loads no torch,
transformers or peft.
"""

from __future__ import annotations

from typing import Final, get_args

from tunewise.config.train import LoraTarget, Method

METHODS: Final[tuple[str, ...]] = get_args(Method)

# ``train.target_modules`` presets, as the projections of a Llama-style model. The planner counts
# "all-linear" as these seven; the trainer hands peft its own "all-linear" rule instead (see
# :func:`peft_target_modules`).
LORA_PRESETS: Final[dict[LoraTarget, tuple[str, ...]]] = {
    "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qv": ("q_proj", "v_proj"),
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}
# peft's rule: every linear layer except the output head, whatever the architecture calls them
# (Phi's qkv_proj/fc1 too), which the Llama names above would miss.
PEFT_ALL_LINEAR: Final[str] = "all-linear"


def peft_target_modules(target_modules: str | list[str]) -> str | list[str]:
    """``train.target_modules`` as ``peft.LoraConfig(target_modules=...)`` takes it.

    A preset becomes its module names, except "all-linear", which stays peft's own rule; an
    explicit list, or a string that is no preset (a regex to peft), passes through unchanged.
    """
    if not isinstance(target_modules, str) or target_modules == PEFT_ALL_LINEAR:
        return target_modules
    preset = LORA_PRESETS.get(target_modules)
    return list(preset) if preset is not None else target_modules
