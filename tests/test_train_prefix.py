"""Shared-prefix training: the same loss and gradients as the plain path, on the tiny model.

Batches are real chat examples rendered by the SmolLM2 template (tests/conftest.py's
``tiny_model_dir``), so the shared prefix is what it is in a project: the system prompt and the
opening of the user turn.
"""

from __future__ import annotations

import pytest
import torch

from tunewise.data.schema import Example
from tunewise.train.collate import ChatCollator, Encoded, LengthGroupedSampler, encode
from tunewise.train.loss import answer_loss
from tunewise.train.prefix import (
    MIN_PREFIX_TOKENS,
    SharedPrefix,
    prefix_layout,
    resolve,
    shared_prefix_length,
    shared_prefix_loss,
)

SYSTEM = (
    "Triage the support ticket. Categories: billing (charges, invoices), shipping (delivery, "
    "parcels), account (login, password). Priorities: high, medium, low. Reply exactly: "
    "Category: <category>"
)
RTOL = 1e-4  # the bar; measured differences are ~1e-6 (float summation order)


def chat(user: str, answer: str, system: str = SYSTEM, turns: int = 1) -> Example:
    msgs = [{"role": "system", "content": system}]
    for t in range(turns):
        msgs += [
            {"role": "user", "content": f"{user} (turn {t})" if turns > 1 else user},
            {"role": "assistant", "content": f"Category: {answer}{' ' * t}"},
        ]
    return Example(messages=msgs, line=0, source="test")


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def collate(tok, examples: list[Example]) -> dict[str, torch.Tensor]:
    items = [encode(tok, e) for e in examples]
    return ChatCollator(pad_token_id=tok.pad_token_id)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in items]
    )


def tiny(tiny_model_dir, method: str, checkpointing: bool = False):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"),
        )
        for name, p in model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at 0, which would leave every A gradient 0
                torch.nn.init.normal_(p, std=0.05)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def loss_and_grads(model, fn) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss, _ = fn()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads


def assert_same(model, inputs, shared_fn) -> None:
    want_loss, want = loss_and_grads(model, lambda: answer_loss(model, inputs))
    got_loss, got = loss_and_grads(model, shared_fn)
    assert got_loss == pytest.approx(want_loss, rel=RTOL)
    assert set(got) == set(want)
    for name, g in want.items():
        assert g is not None and got[name] is not None, name
        torch.testing.assert_close(got[name], g, rtol=RTOL, atol=1e-7, msg=name)


TICKETS = [
    ("my invoice shows a double charge for March", "billing"),
    ("where is my parcel, the tracking page has not changed in a week", "shipping"),
    ("I cannot log in since I changed my password", "account"),
    ("refund", "billing"),
]


@pytest.mark.parametrize(
    "method,checkpointing", [("lora", False), ("full", False), ("lora", True), ("full", True)]
)
def test_lora_and_full_fine_tuning_match_the_plain_path(tiny_model_dir, tok, method, checkpointing):
    model = tiny(tiny_model_dir, method, checkpointing)
    inputs = collate(tok, [chat(u, a) for u, a in TICKETS])
    shared = SharedPrefix(True, "test")
    n = shared_prefix_length(inputs)
    assert n >= 40  # the system prompt and the user turn's opening
    assert_same(model, inputs, lambda: shared.loss(model, inputs, None))
    assert shared.stats["prefix_batches"] == 1 and shared.stats["plain_batches"] == 0
    assert shared.stats["tokens_not_recomputed"] == 3 * n


def test_multi_turn_examples_match(tiny_model_dir, tok):
    model = tiny(tiny_model_dir, "lora")
    inputs = collate(tok, [chat(u, a, turns=3) for u, a in TICKETS[:3]])
    labelled = (inputs["labels"] != -100).any(dim=0).nonzero()[0, 0]
    n = shared_prefix_length(inputs)
    assert MIN_PREFIX_TOKENS <= n <= int(labelled) - 1  # cut before the first answer's logit
    assert_same(model, inputs, lambda: shared_prefix_loss(model, inputs, n))


def test_suffixes_of_very_different_lengths_match(tiny_model_dir, tok):
    model = tiny(tiny_model_dir, "lora")
    long_ticket = "the thermostat " + " ".join(f"reading {i} was wrong" for i in range(60))
    inputs = collate(tok, [chat("hi", "account"), chat(long_ticket, "billing")])
    lengths = inputs["attention_mask"].sum(dim=1)
    n = shared_prefix_length(inputs)
    assert lengths.max() - n > 10 * (lengths.min() - n)  # one suffix >10x the other
    assert_same(model, inputs, lambda: shared_prefix_loss(model, inputs, n))


def test_a_batch_of_one_matches_and_runs_plain(tiny_model_dir, tok):
    model = tiny(tiny_model_dir, "lora")
    inputs = collate(tok, [chat(*TICKETS[0])])
    n = shared_prefix_length(inputs)
    assert n > MIN_PREFIX_TOKENS
    # the mechanics hold for one row, but nothing is saved, so the run takes the plain path
    assert_same(model, inputs, lambda: shared_prefix_loss(model, inputs, n))
    shared = SharedPrefix(True, "test")
    assert_same(model, inputs, lambda: shared.loss(model, inputs, None))
    assert shared.stats["prefix_batches"] == 0 and shared.stats["plain_batches"] == 1


def test_rows_sharing_no_prefix_fall_back_to_the_plain_path(tiny_model_dir, tok):
    model = tiny(tiny_model_dir, "lora")
    inputs = collate(
        tok,
        [chat("my invoice", "billing", system="Classify."), chat("my parcel", "shipping")],
    )
    assert shared_prefix_length(inputs) < MIN_PREFIX_TOKENS
    shared = SharedPrefix(True, "test")
    assert_same(model, inputs, lambda: shared.loss(model, inputs, None))
    assert shared.stats["plain_batches"] == 1 and shared.stats["prefix_batches"] == 0


def test_a_batch_without_labels_shares_nothing(tok):
    inputs = collate(tok, [chat(u, a) for u, a in TICKETS[:2]])
    assert shared_prefix_length(inputs) > MIN_PREFIX_TOKENS
    inputs["labels"][:] = -100
    assert shared_prefix_length(inputs) == 0  # the plain path keeps a graph for backward


def test_gradient_accumulation_normaliser_is_passed_through(tiny_model_dir, tok):
    model = tiny(tiny_model_dir, "lora")
    inputs = collate(tok, [chat(u, a) for u, a in TICKETS[:3]])
    n_items = torch.tensor(57)
    n = shared_prefix_length(inputs)
    want, _ = answer_loss(model, inputs, n_items)
    got, _ = shared_prefix_loss(model, inputs, n, n_items)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=RTOL)


def test_evaluation_under_no_grad_matches(tiny_model_dir, tok):
    model = tiny(tiny_model_dir, "full").eval()
    inputs = collate(tok, [chat(u, a) for u, a in TICKETS])
    with torch.no_grad():
        want, _ = answer_loss(model, inputs)
        got, _ = SharedPrefix(True, "test").loss(model, inputs, None)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=RTOL)


def test_reentrant_checkpointing_turns_the_feature_off_with_a_warning(tiny_model_dir, tok):
    model = tiny(tiny_model_dir, "full")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    inputs = collate(tok, [chat(u, a) for u, a in TICKETS])
    shared = SharedPrefix(True, "test")
    with pytest.warns(UserWarning, match="reentrant"):
        assert_same(model, inputs, lambda: shared.loss(model, inputs, None))
    assert not shared.enabled and shared.stats["plain_batches"] == 1
    assert "use_reentrant=True" in shared.stats["reason"]


def test_checkpointing_that_drops_every_cache_turns_the_feature_off(
    tiny_model_dir, tok, monkeypatch
):
    """Older transformers drop the cache from every checkpointed layer (no opt-out flag)."""
    import tunewise.train.prefix as prefix

    monkeypatch.setattr(prefix, "_checkpointing_can_keep_a_cache", lambda: False)
    model = tiny(tiny_model_dir, "lora", checkpointing=True)
    inputs = collate(tok, [chat(u, a) for u, a in TICKETS[:2]])
    shared = SharedPrefix(True, "test")
    with pytest.warns(UserWarning, match="drops the cache"):
        shared.loss(model, inputs, None)
    assert not shared.enabled and shared.stats["plain_batches"] == 1


# --- which rows share a prefix, and the decision -----------------------------------------------


def item(ids: list[int], n_labels: int = 2) -> Encoded:
    return Encoded(ids, [-100] * (len(ids) - n_labels) + ids[-n_labels:])


def test_prefix_layout_groups_rows_by_prefix():
    a, b = list(range(100, 140)), list(range(200, 230))  # two "system prompts"
    items = [item([*a, i, i + 1, 7, 8]) for i in range(6)] + [item([*b, i, 9, 9]) for i in range(5)]
    items.append(item([1, 2, 3, 4, 5]))  # shares nothing
    layout = prefix_layout(items, batch_size=4, min_tokens=16)
    assert layout.groups[:6] == [layout.groups[0]] * 6
    assert layout.groups[6:11] == [layout.groups[6]] * 5
    assert layout.groups[0] != layout.groups[6] and layout.groups[11] == -1
    assert sorted(layout.prefixes) == [30, 40]
    # group of 6 at batch 4: 2 batches, 4 rows skip 40 tokens; group of 5: 2 batches, 3 x 30
    assert layout.saved_tokens == 4 * 40 + 3 * 30
    assert layout.main_prefix == 40


def test_prefix_stops_before_the_first_label():
    shared = list(range(100, 140))
    items = [Encoded([*shared, i, 5], [-100] * 20 + shared[20:] + [i, 5]) for i in range(3)]
    layout = prefix_layout(items, batch_size=3, min_tokens=16)
    assert layout.prefixes == [19]  # label at 20: its logit sits at 19, which the suffix keeps


def whole_group_batches(order: list[int], groups: list[int], size: int) -> int:
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    return sum(len(b) == size and len({groups[i] for i in b}) == 1 for b in batches)


def test_sampler_never_mixes_prefix_groups_and_puts_the_short_batch_last():
    groups = [0] * 10 + [1] * 7 + [-1] * 3
    s = LengthGroupedSampler(list(range(20, 40)), batch_size=4, seed=1, groups=groups)
    order = list(s)
    assert sorted(order) == list(range(20)) and order == list(s)
    # 2 batches of group 0 and 1 of group 1; their 5 leftovers and the 3 loners make 2 more,
    # which mix groups (sorted by length: the loners are longest, then group 1, then group 0)
    assert whole_group_batches(order, groups, 4) == 3
    # one more example: 21 = 5 x 4 + 1. The short batch must come last, or the DataLoader's cut
    # into fours would shift every batch after it across group boundaries.
    groups.append(0)
    for seed in range(5):
        order = list(LengthGroupedSampler(list(range(20, 41)), 4, seed=seed, groups=groups))
        assert sorted(order) == list(range(21))
        assert whole_group_batches(order[:20], groups, 4) == 3


def test_resolve_off_and_auto(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    long = [item([*list(range(100, 180)), i, 3, 4]) for i in range(16)]
    short = [item(list(range(100, 110)) + [i, 3, 4] * 20) for i in range(16)]
    assert not resolve("off", long, 8, model).enabled
    assert not resolve("auto", long, 1, model).enabled
    on = resolve("auto", long, 8, model)
    assert on.enabled and on.warning is None and on.groups == [0] * 16
    assert "80-token prefix" in on.reason
    off = resolve("auto", short, 8, model)
    assert not off.enabled and off.warning is None and off.groups is None


def test_sliding_window_models_are_turned_off_with_a_warning():
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=16,
    )
    shared = resolve("auto", [item([*list(range(100, 180)), 1, 2])] * 4, 4, MistralForCausalLM(cfg))
    assert not shared.enabled and "sliding-window" in (shared.warning or "")


def test_config_accepts_auto_and_off_only(tmp_path):
    from tunewise.config import load_project
    from tunewise.errors import UserError

    data = tmp_path / "d.jsonl"
    data.write_text("")
    (tmp_path / "project.yaml").write_text(
        "name: p\ndata: {train: d.jsonl}\ntrain: {shared_prefix: off}\n"
    )
    assert load_project(tmp_path).train.shared_prefix == "off"  # YAML's bare off is false
    assert load_project(tmp_path, ["train.shared_prefix=auto"]).train.shared_prefix == "auto"
    with pytest.raises(UserError, match=r"train\.shared_prefix: Input should be 'auto' or 'off'"):
        load_project(tmp_path, ["train.shared_prefix=on"])


# --- through the training engine -------------------------------------------------------------


def test_n_steps_with_a_shared_prefix_save_the_plain_paths_adapter(tmp_path, tiny_model_dir):
    """8 LoRA steps (dropout 0) with train.shared_prefix auto and off end at the same adapter.

    Both runs see the same batches in the same order (40 examples, batch 4: one prefix group cut
    into whole batches, as the plain sampler cuts them). Per step the gradients agree to ~1e-6
    (summation order); AdamW then moves every weight by about lr times the sign of its gradient
    in early steps, so a rounding difference can only matter where a gradient is itself ~0.
    Bound: every weight's change within 1% of the largest change training made (measured
    ~1e-5 of it), far below the difference one step of another batch order makes (> 10%).
    """
    from safetensors.torch import load_file

    from _train_helpers import make_project
    from tunewise.config import load_project
    from tunewise.train.trainer import train

    records, weights = {}, {}
    for mode in ("auto", "off"):
        root = tmp_path / mode
        project = make_project(
            root,
            tiny_model_dir,
            system_prompt=SYSTEM,
            max_steps=8,
            eval_every=4,
            save_every=8,
            overfit_sample=0,
            lora_dropout=0.0,
            shared_prefix=mode,
        )
        records[mode] = train(load_project(project), run_dir=root / "run", progress=False)
        weights[mode] = load_file(root / "run" / "adapter_model.safetensors")
    on, off = records["auto"]["shared_prefix"], records["off"]["shared_prefix"]
    assert on["enabled"] and on["prefix_batches"] == 8 and on["plain_batches"] == 0
    assert on["tokens_not_recomputed"] > 8 * 3 * 40  # 3 of 4 rows skip a 40+-token prefix
    assert not off["enabled"] and off["prefix_batches"] == 0
    assert records["auto"]["train_loss"] == pytest.approx(records["off"]["train_loss"], rel=1e-4)
    for a, b in zip(records["auto"]["metrics"], records["off"]["metrics"], strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    # LoRA B starts at 0, so B's values are what training moved: compare the changes
    moved = max(float(w.abs().max()) for k, w in weights["off"].items() if "lora_B" in k)
    assert moved > 0
    for key, w in weights["off"].items():
        diff = float((weights["auto"][key] - w).abs().max())
        assert diff <= 0.01 * moved, (key, diff, moved)


def test_qlora_matches_within_bf16_rounding(tiny_model_dir, tok):
    """QLoRA's 4-bit layers compute in bf16 (8 significant bits: ~4e-3 relative rounding per
    product), so the two paths, which multiply matrices of different shapes, cannot agree to
    1e-4. The loss still does (rel 1e-4); each gradient within 1% in norm (measured ~1e-3)."""
    from tunewise.config import ProjectConfig
    from tunewise.runtime import models
    from tunewise.train.trainer import build_model

    cfg = ProjectConfig(
        name="q",
        data={"train": "x.jsonl"},
        model={"base": str(tiny_model_dir)},
        train={"method": "qlora", "lora_dropout": 0.0},
    )
    model = build_model(cfg, models.resolve(str(tiny_model_dir)), "qlora")
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    model.train()
    inputs = collate(tok, [chat(u, a) for u, a in TICKETS])
    want_loss, want = loss_and_grads(model, lambda: answer_loss(model, inputs))
    shared = SharedPrefix(True, "test")
    got_loss, got = loss_and_grads(model, lambda: shared.loss(model, inputs, None))
    assert shared.stats["prefix_batches"] == 1
    assert got_loss == pytest.approx(want_loss, rel=RTOL)
    for name, g in want.items():
        assert float((got[name] - g).norm()) <= 0.01 * float(g.norm()), name
