"""The tiny random Llama the tests train and serve (and the benches' smoke runs): 2 layers,
hidden 64, the real tokenizer, saved as safetensors. Seconds to build, nothing downloaded."""

from __future__ import annotations

from pathlib import Path


def build_tiny_llama(out: Path, tokenizer_from: str | Path, *, max_positions: int = 1024) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_from)
    torch.manual_seed(0)  # the same weights in every process: answers comparable across runs
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
