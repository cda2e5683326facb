"""Logits only at labelled positions: the same loss and gradients as the stock causal-LM loss."""

from __future__ import annotations

import pytest
import torch

from tunewise.train.loss import answer_loss, labelled_positions, supports_sparse_logits


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg)


def batch():
    """Three right-padded rows whose answers sit at different positions; one row's answer spans
    two turns."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    ids[2, 9:] = 0
    mask[2, 9:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 9:12] = ids[0, 9:12]
    labels[1, 4:6] = ids[1, 4:6]
    labels[1, 10:12] = ids[1, 10:12]
    labels[2, 6:9] = ids[2, 6:9]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("num_items", [None, 23])
def test_answer_loss_equals_stock_loss_and_gradients(num_items):
    model = tiny_llama()
    inputs = batch()
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    stock = model(**inputs, **kwargs).loss
    stock.backward()
    want = grads(model)
    model.zero_grad()
    ours, outputs = answer_loss(model, inputs, kwargs.get("num_items_in_batch"))
    ours.backward()
    got = grads(model)
    assert float(ours.detach()) == pytest.approx(float(stock.detach()), rel=1e-5)
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    # the head ran at 8 of the 12 positions, not all of them
    assert outputs.logits.shape == (3, 8, 97)


def test_labelled_positions_is_the_union_of_shifted_label_positions():
    labels = batch()["labels"]
    assert labelled_positions(labels).tolist() == [3, 4, 5, 6, 7, 8, 9, 10]
    none = torch.full((2, 5), -100)
    assert labelled_positions(none).tolist() == [0]  # still a graph to backpropagate through


def test_sparse_logits_detected_through_peft():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"]))
    assert supports_sparse_logits(model)
    assert not supports_sparse_logits(torch.nn.Linear(2, 2))
