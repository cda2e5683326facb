"""The tiny random models the tests train and serve (and the benches' smoke runs): 2 layers,
hidden 64, the real tokenizer, saved as safetensors. Seconds to build, nothing downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build_tiny(
    out: Path,
    tokenizer_from: str | Path,
    config_cls: Any = None,
    *,
    seed: int = 0,
    max_positions: int = 1024,
    with_pad: bool = False,
    **extra: Any,
) -> Path:
    """A random 2-layer model of ``config_cls`` (default Llama); ``extra`` goes to the config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(tokenizer_from)
    torch.manual_seed(seed)  # the same weights in every process: answers comparable across runs
    if with_pad:
        extra["pad_token_id"] = tok.pad_token_id
    config = (config_cls or LlamaConfig)(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **extra,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def build_tiny_llama(out: Path, tokenizer_from: str | Path, *, max_positions: int = 1024) -> Path:
    """The Llama every test shares (``tiny_model_dir``): tied embeddings, a pad token."""
    return build_tiny(
        out, tokenizer_from, max_positions=max_positions, with_pad=True, tie_word_embeddings=True
    )
