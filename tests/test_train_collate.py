"""Assistant-only labels, template parity with inference, overlong handling, padding."""

from __future__ import annotations

import pytest

from tunewise.data.schema import Example
from tunewise.errors import DataError
from tunewise.train.collate import (
    IGNORE_INDEX,
    ChatCollator,
    LengthGroupedSampler,
    encode,
    encode_all,
)

MULTI = [
    {"role": "system", "content": "You triage tickets."},
    {"role": "user", "content": "My card was charged twice."},
    {"role": "assistant", "content": "Category: billing"},
    {"role": "user", "content": "And how urgent is it?"},
    {"role": "assistant", "content": "Priority: high\nWe will refund you today."},
]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from tunewise.runtime import models

    return models.load_tokenizer(models.resolve(str(tiny_model_dir)))


def _label_runs(enc) -> list[list[int]]:
    """Contiguous runs of label tokens (one per trained assistant turn)."""
    runs, cur = [], []
    for t in enc.labels:
        if t == IGNORE_INDEX:
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur:
        runs.append(cur)
    return runs


def test_labels_are_every_assistant_turn_plus_end_of_turn(tok):
    enc = encode(tok, Example(MULTI), train_on="all")
    decoded = [tok.decode(run) for run in _label_runs(enc)]
    assert decoded == [
        "Category: billing<|im_end|>",
        "Priority: high\nWe will refund you today.<|im_end|>",
    ]
    # the labelled ids are the input ids at the same positions (no shift bug, no pad-id masking)
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(enc.input_ids, enc.labels, strict=True))
    # EOS (== pad for this tokenizer) is a label: masking by pad id would have hidden it
    assert enc.labels.count(tok.eos_token_id) == 2


def test_train_on_last_labels_only_the_final_turn(tok):
    enc = encode(tok, Example(MULTI), train_on="last")
    decoded = [tok.decode(run) for run in _label_runs(enc)]
    assert decoded == ["Priority: high\nWe will refund you today.<|im_end|>"]
    # the sequence itself is the same whichever turns are trained
    assert enc.input_ids == encode(tok, Example(MULTI), train_on="all").input_ids


def test_no_system_prompt_uses_the_template_default(tok):
    msgs = MULTI[1:3]
    enc = encode(tok, Example(msgs))
    text = tok.decode(enc.input_ids)
    assert "You are a helpful AI assistant named SmolLM" in text  # the template's own default
    assert [tok.decode(r) for r in _label_runs(enc)] == ["Category: billing<|im_end|>"]


@pytest.mark.parametrize("messages", [MULTI, MULTI[1:3]])
def test_training_prompt_equals_inference_prompt(tok, messages):
    enc = encode(tok, Example(messages), train_on="last")
    first_label = next(i for i, t in enumerate(enc.labels) if t != IGNORE_INDEX)
    inference = tok.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True)
    if isinstance(inference, dict) or hasattr(inference, "input_ids"):
        inference = inference["input_ids"]
    assert enc.input_ids[:first_label] == list(inference)
    # and the whole training sequence is the template's rendering of the conversation
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert rendered.startswith(tok.decode(enc.input_ids))


def _long_examples(n_long: int = 2) -> list[Example]:
    short = [
        Example(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            line=1,
            source="d.jsonl",
        )
    ]
    long = [
        Example(
            [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}],
            line=2 + i,
            source="d.jsonl",
        )
        for i in range(n_long)
    ]
    answer_long = [
        Example(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "answer " * 200}],
            line=9,
            source="d.jsonl",
        )
    ]
    return short + long + answer_long


def test_overlong_drop_is_reported(tok):
    items, report = encode_all(tok, _long_examples(), max_len=64, overlong="drop")
    assert len(items) == 1 and report.dropped == 3 and len(report.overlong) == 3
    assert (
        "3 of 4 examples exceed max_len=64" in report.summary() and "d.jsonl:2" in report.summary()
    )


def test_overlong_truncate_keeps_examples_with_answer_tokens(tok):
    items, report = encode_all(tok, _long_examples(), max_len=64, overlong="truncate")
    # prompt-only truncations lose every answer token and are dropped (and counted); the
    # long-answer one keeps part of its answer
    assert report.truncated == 1 and report.dropped == 2
    assert all(len(e.input_ids) <= 64 and e.n_label_tokens > 0 for e in items)
    assert "truncated 1" in report.summary()


def test_overlong_error_names_file_and_line(tok):
    with pytest.raises(DataError) as err:
        encode_all(tok, _long_examples(), max_len=64, overlong="error")
    assert str(err.value).startswith("d.jsonl:2: messages:") and "and 2 more" in str(err.value)


def test_collator_pads_to_batch_longest_and_masks_padding(tok):
    a = encode(tok, Example(MULTI))
    b = encode(tok, Example(MULTI[1:3]))
    batch = ChatCollator(pad_token_id=tok.pad_token_id)(
        [
            {"input_ids": a.input_ids, "labels": a.labels},
            {"input_ids": b.input_ids, "labels": b.labels},
        ]
    )
    n = len(a.input_ids)
    assert batch["input_ids"].shape == (2, n)
    short = len(b.input_ids)
    assert (
        batch["attention_mask"][1, short:].sum() == 0 and batch["attention_mask"][1, :short].all()
    )
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all()
    assert batch["labels"][1, :short].tolist() == b.labels


def test_length_grouped_sampler_is_a_deterministic_permutation():
    lengths = [5, 100, 7, 90, 6, 95, 8, 85, 4, 99, 3, 80]
    s = LengthGroupedSampler(lengths, batch_size=2, seed=3, group=50)
    s.set_epoch(1)
    order = list(s)
    assert sorted(order) == list(range(len(lengths)))
    assert order == list(s)  # same (seed, epoch) -> same order
    batches = [order[i : i + 2] for i in range(0, len(order), 2)]
    # batches hold similar lengths: padding waste is far below a random pairing's
    waste = sum(abs(lengths[a] - lengths[b]) for a, b in batches)
    assert waste < 40
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # OOM shows up at step 1
    s.set_epoch(2)
    assert list(s) != order
