"""The stop rules as pure functions, and the repetition metrics they read."""

from __future__ import annotations

import pytest

from tunewise.train.callbacks import (
    EvalPoint,
    decide,
    distinct_n,
    history_from_log,
    repeated_ngram_rate,
    repetition_scores,
)


def _h(losses, reps=None):
    reps = reps or [None] * len(losses)
    return [
        EvalPoint(step=10 * (i + 1), val_loss=v, repetition=r)
        for i, (v, r) in enumerate(zip(losses, reps, strict=True))
    ]


def test_repetition_metrics():
    assert repeated_ngram_rate("the cat sat on the mat") == 0.0
    looping = "I am sorry " * 10
    assert repeated_ngram_rate(looping) > 0.8
    assert distinct_n(looping) < 0.2
    assert (
        distinct_n("Category: billing") == 1.0 and repeated_ngram_rate("Category: billing") == 0.0
    )
    s = repetition_scores(["a b c d", looping])
    assert 0.4 < s["repetition"] < 0.5 and s["distinct2"] < 0.6


def test_keeps_going_while_loss_falls_and_generations_stay_varied():
    d = decide(
        _h([2.0, 1.5, 1.2, 1.1], [0.0, 0.02, 0.01, 0.03]), patience=2, repetition_threshold=0.3
    )
    assert not d.stop


def test_early_stopping_after_patience_evals_without_improvement():
    h = _h([2.0, 1.5, 1.6, 1.55])
    assert not decide(h[:3], patience=2, repetition_threshold=0.3).stop
    d = decide(h, patience=2, repetition_threshold=0.3)
    assert d.stop and d.kind == "early_stopping"
    assert "best 1.5000 at step 20" in d.reason and "2 evaluations" in d.reason


def test_flat_loss_is_not_an_improvement():
    d = decide(_h([1.0, 1.0]), patience=1, repetition_threshold=0.3)
    assert d.stop and d.kind == "early_stopping"


def test_overfitting_falling_loss_with_rising_repetition_stops_and_says_why():
    d = decide(_h([2.0, 1.5, 1.2], [0.05, 0.1, 0.45]), patience=3, repetition_threshold=0.3)
    assert d.stop and d.kind == "overfitting"
    assert "still falling (1.5000 -> 1.2000)" in d.reason and "0.10 -> 0.45" in d.reason


@pytest.mark.parametrize(
    "losses,reps",
    [
        ([2.0, 1.5, 1.2], [0.05, 0.1, 0.25]),  # rising but under the threshold
        (
            [2.0, 1.5, 1.2],
            [0.6, 0.5, 0.4],
        ),  # past the threshold but falling (the base model's habit)
        ([2.0, 1.5, 1.2], [0.05, None, 0.5]),  # no previous measurement to compare with
    ],
)
def test_overfitting_needs_a_rise_past_the_threshold(losses, reps):
    assert not decide(_h(losses, reps), patience=3, repetition_threshold=0.3).stop


def test_rising_loss_with_repetition_is_early_stopping_not_overfitting():
    d = decide(_h([1.0, 1.2], [0.1, 0.5]), patience=1, repetition_threshold=0.3)
    assert d.stop and d.kind == "early_stopping"


def test_history_is_rebuilt_from_trainer_log_history():
    log = [
        {"step": 5, "loss": 3.0},
        {"step": 10, "eval_loss": 2.0},
        {"step": 10, "tw_repetition": 0.1, "tw_distinct2": 0.9},
        {"step": 20, "eval_loss": float("nan")},  # dropped: a NaN loss is no evidence
        {"step": 30, "eval_loss": 1.5},
    ]
    assert history_from_log(log) == [EvalPoint(10, 2.0, 0.1, 0.9), EvalPoint(30, 1.5, None, None)]


def test_batched_generation_matches_one_at_a_time(tiny_model_dir):
    # The overfitting check generates its sample as one left-padded batch; what it scores must
    # be what each prompt alone would give. Prompts of different lengths make the padding vary;
    # one quotes a control token, which must reach the model as text (chat.encode).
    import torch

    from tunewise.runtime import chat, models
    from tunewise.train.callbacks import generate_greedy

    ref = models.resolve(str(tiny_model_dir))
    tok = models.load_tokenizer(ref)
    model = models.load_model(ref)
    torch.manual_seed(1)
    with torch.no_grad():  # larger random weights: the text depends on the prompt
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    model.train()
    prompts = [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "You triage tickets."}, {"role": "user", "content": "x"}],
        [{"role": "user", "content": "my invoice is wrong " * 6}],
        [{"role": "user", "content": "quote <|im_end|> here"}],
    ]
    seen = []
    generate = model.generate
    model.generate = lambda **kw: seen.append(kw["input_ids"].tolist()) or generate(**kw)
    batched = generate_greedy(model, tok, prompts, max_new_tokens=16)
    alone = [generate_greedy(model, tok, [p], max_new_tokens=16)[0] for p in prompts]
    assert batched == alone
    assert all(batched) and len(set(batched)) > 1
    assert len(seen) == 1 + len(prompts)  # the batch is one generate call
    assert model.training  # put back in training mode
    # the quoted control token went in as text, exactly as chat.encode tokenizes it
    rendered = chat.render(tok, prompts[3], generation_prompt=True)
    (expected,) = chat.encode(tok, [rendered])
    assert seen[-1] == [expected]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    without = chat.render(tok, [{"role": "user", "content": "quote here"}], generation_prompt=True)
    assert expected.count(im_end) == chat.encode(tok, [without])[0].count(im_end)
    assert repetition_scores(batched) == repetition_scores(alone)
