"""Mixed-adapter batches: one forward serves rows of different LoRA adapters and the bare base.

Every answer of a mixed batch must equal that request's answer generated alone, token for token
(greedy), and the rows must really share forwards: a spy on the PEFT model's ``forward`` records
the ``adapter_names`` of every call.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from tunewise.runtime import decoding, models
from tunewise.runtime.engine import Engine, GenRequest, GenResult, fill_batches

# A long shared system prompt (well over decoding.MIN_SHARED_PREFIX tokens): its keys and values
# differ per adapter, because every adapter below puts LoRA on k_proj or v_proj.
LONG_SYSTEM = (
    "You are the support triage assistant of a large online shop. Read the customer's ticket, "
    "then reply with one category (billing, delivery, account, technical, other) and one "
    "priority (low, normal, high). Never add anything else to the reply."
)
QUESTIONS = [
    "My invoice is wrong",
    "The app crashes every time I open the settings page on my phone, please help me now",
    "hi",
    "Can I change the email address on my account?",
    "Refund please",
    "Your service has been down for two hours and our whole team is blocked right now",
    "Where is my parcel?",
]
# name -> (seed, rank, target modules): different weights, ranks and modules per adapter
SPECS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "a": (1, 4, ("q_proj", "k_proj", "v_proj")),
    "b": (2, 8, ("k_proj", "v_proj", "down_proj")),
    "c": (3, 2, ("v_proj", "o_proj", "up_proj")),
}


def _msgs(q: str, system: str | None = LONG_SYSTEM) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": q}]


@pytest.fixture(scope="module")
def tiny_ref(lively_dir: Path) -> models.ModelRef:
    return models.resolve(str(lively_dir))


def _make_adapter(
    base_dir: Path, out: Path, weight_hash: str, seed: int, r: int, targets: tuple[str, ...], **kw
) -> Path:
    """A random LoRA adapter, large enough to change greedy answers, with a run.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False, **kw
    )
    peft_model = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.mul_(4.0)
            elif "modules_to_save" in name:  # a saved copy that differs from the base's
                p.mul_(1.5)
    peft_model.save_pretrained(out)
    run = {"status": "completed", "method": "lora"}
    run["base_model"] = {"name": "tiny", "path": str(base_dir), "weight_hash": weight_hash}
    (out / "run.json").write_text(json.dumps(run))
    return out


@pytest.fixture(scope="module")
def adapters(lively_dir: Path, tiny_ref, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mixed-adapters")
    out = {
        name: _make_adapter(lively_dir, root / name, tiny_ref.weight_hash, seed, r, targets)
        for name, (seed, r, targets) in SPECS.items()
    }
    # DoRA: PEFT refuses `adapter_names` for it, so the engine must run it in its own batches
    out["dora"] = _make_adapter(
        lively_dir, root / "dora", tiny_ref.weight_hash, 4, 4, ("q_proj", "v_proj"), use_dora=True
    )
    # modules_to_save: PEFT's wrapper of the saved module cannot serve other adapters' rows
    saved = {"modules_to_save": ["norm"]}
    out["saved"] = _make_adapter(
        lively_dir, root / "saved", tiny_ref.weight_hash, 5, 4, ("q_proj",), **saved
    )
    return out


def _engine(tiny_ref, adapters, names=("a", "b", "c"), **kw: Any) -> Engine:
    eng = Engine(tiny_ref, **{"batch_size": 16, "max_loaded_adapters": 4, **kw})
    for n in names:
        eng.load_adapter(n, adapters[n])
    return eng


class ForwardSpy:
    """Wraps the PEFT model's forward; keeps ``(batch, width, adapter_names)`` of every call
    and the adapters pinned in the pool at that moment."""

    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, int, list[str] | None]] = []
        self.pinned: list[set[str]] = []
        self.slots = {n: engine.pool.get(n).slot for n in engine.adapters()}
        peft_model = engine.pool.model
        original: Callable[..., Any] = peft_model.forward

        def forward(*args: Any, **kw: Any) -> Any:
            ids = kw["input_ids"]
            names = kw.get("adapter_names")
            self.calls.append((ids.shape[0], ids.shape[1], None if names is None else list(names)))
            self.pinned.append(set(engine.pool._pins))
            return original(*args, **kw)

        monkeypatch.setattr(peft_model, "forward", forward)

    def mixed(self) -> list[tuple[int, int, list[str]]]:
        """The calls that ran more than one adapter (or adapters and the base) together."""
        return [c for c in self.calls if c[2] is not None and len(set(c[2])) > 1]

    def names(self, call_names: list[str]) -> set[str | None]:
        """Engine adapter names (None for the base) of a call's ``adapter_names``."""
        by_slot = {s: n for n, s in self.slots.items()}
        return {by_slot.get(s) for s in call_names}


def _alone(engine: Engine, reqs: list[GenRequest]) -> list[GenResult]:
    return [engine.generate([r])[0] for r in reqs]


def _same(got: list[GenResult], want: list[GenResult]) -> None:
    for g, w in zip(got, want, strict=True):
        assert (g.text, g.completion_tokens, g.finish_reason) == (
            w.text,
            w.completion_tokens,
            w.finish_reason,
        )


@pytest.mark.usefixtures("torch_threads")
def test_mixed_batch_equals_each_request_alone(tiny_ref, adapters, monkeypatch) -> None:
    eng = _engine(tiny_ref, adapters)
    # three adapters and the base, prompt lengths from 1 word to 20, most sharing the long
    # system prompt, two with a system prompt of their own
    reqs = [
        GenRequest(
            messages=_msgs(q, LONG_SYSTEM if i % 4 else q[::-1]),
            adapter=(None, "a", "b", "c")[i % 4],
            max_new_tokens=6 + i % 3,
        )
        for i, q in enumerate(QUESTIONS + QUESTIONS[:5])
    ]
    alone = _alone(eng, reqs)
    # the adapters answer differently from each other and from the base: equality is not trivial
    assert len({alone[i].text for i in (4, 5, 6, 7)}) == 4
    spy = ForwardSpy(eng, monkeypatch)
    _same(eng.generate(reqs), alone)
    assert spy.mixed(), "no forward mixed adapters"
    assert spy.calls[0][0] == len(reqs)  # one batch, prefilled at once
    assert all(spy.names(c[2]) <= {None, "a", "b", "c"} for c in spy.mixed())
    assert any(spy.names(c[2]) == {None, "a", "b", "c"} for c in spy.mixed())


def test_one_forward_per_step_serves_every_adapter_and_the_base(
    tiny_ref, adapters, monkeypatch
) -> None:
    eng = _engine(tiny_ref, adapters)
    # no common prefix (own system prompts): a plain prefill, then one forward per new token
    reqs = [
        GenRequest(messages=_msgs(q, q[::-1]), adapter=ad, max_new_tokens=3)
        for q, ad in zip(QUESTIONS[:4], ("a", "b", None, "c"), strict=True)
    ]
    eos = eng.eos_ids
    monkeypatch.setattr(eng, "eos_ids", frozenset())  # every row runs all 3 steps
    spy = ForwardSpy(eng, monkeypatch)
    eng.generate(reqs)
    assert len(spy.calls) == 3  # per-adapter groups took 4 x 3
    assert all(c[0] == 4 and spy.names(c[2]) == {"a", "b", "c", None} for c in spy.calls)
    monkeypatch.setattr(eng, "eos_ids", eos)

    # the old grouping stays available as the reference (the bench compares the two)
    old = _engine(tiny_ref, adapters, mixed_adapters=False)
    monkeypatch.setattr(old, "eos_ids", frozenset())
    old_spy = ForwardSpy(old, monkeypatch)
    old.generate(reqs)
    assert len(old_spy.calls) == 12 and all(c[2] is None for c in old_spy.calls)


def test_shared_prefix_runs_once_per_adapter(tiny_ref, adapters, monkeypatch) -> None:
    """Adapters a and b put LoRA on k_proj/v_proj: the shared system prompt has other keys and
    values under each, so it must be computed per adapter (once each), never shared across."""
    eng = _engine(tiny_ref, adapters)
    qs = QUESTIONS[:4]
    reqs = [
        GenRequest(messages=_msgs(q), adapter=ad, max_new_tokens=8)
        for q, ad in zip(qs, ("a", "b", "b", "a"), strict=True)
    ]
    alone = _alone(eng, reqs)
    shared = decoding._common_prefix(eng.encode([eng.render(r.messages) for r in reqs]))
    assert shared >= 3 * decoding.MIN_SHARED_PREFIX
    eng.prefix_cache.clear()  # the requests alone stored their prompts: this is about a cold batch
    spy = ForwardSpy(eng, monkeypatch)
    _same(eng.generate(reqs), alone)
    batch, width, names = spy.calls[0]
    assert (batch, width) == (2, shared) and names is not None  # the prefix, once per adapter
    assert spy.names(names) == {"a", "b"}
    assert spy.calls[1][0] == 4 and spy.calls[1][1] < width  # then only the own suffixes


def test_batch_over_more_adapters_than_resident(tiny_ref, adapters, monkeypatch) -> None:
    eng = _engine(tiny_ref, adapters, max_loaded_adapters=2)
    reqs = [
        GenRequest(messages=_msgs(q), adapter=(None, "a", "b", "c")[i % 4], max_new_tokens=6)
        for i, q in enumerate(QUESTIONS + QUESTIONS[:1])
    ]
    alone = _alone(eng, reqs)
    spy = ForwardSpy(eng, monkeypatch)
    _same(eng.generate(reqs), alone)
    assert spy.mixed(), "no forward mixed adapters"
    for (_, _, names), pinned in zip(spy.calls, spy.pinned, strict=True):
        used = spy.names(names) - {None} if names is not None else set()
        assert len(used) <= 2  # a batch never needs more adapters than can be resident
        assert used <= pinned  # and every one of them stays pinned while it runs
    assert len(eng.loaded_adapters()) <= 2


def test_threads_mixing_different_adapters_get_their_own_answers(
    tiny_ref, adapters, monkeypatch
) -> None:
    """Three threads, each mixing two adapters, over a pool that keeps two resident: pins hold
    every adapter of each batch while its steps interleave with the others'."""
    eng = _engine(tiny_ref, adapters, max_loaded_adapters=2)
    batches = [
        [
            GenRequest(messages=_msgs(q), adapter=ad, max_new_tokens=5)
            for q, ad in zip(QUESTIONS[k : k + 3], pair, strict=True)
        ]
        for k, pair in enumerate([("a", "b", None), ("c", "a", "b"), (None, "c", "a")])
    ]
    want = [_alone(eng, b) for b in batches]
    spy = ForwardSpy(eng, monkeypatch)
    barrier = threading.Barrier(len(batches))

    def run(batch: list[GenRequest]) -> list[GenResult]:
        barrier.wait()
        return eng.generate(batch)

    with ThreadPoolExecutor(len(batches)) as pool:
        for got, w in zip(pool.map(run, batches), want, strict=True):
            _same(got, w)
    assert len(spy.mixed()) >= len(batches)


def test_adapter_peft_cannot_mix_runs_in_its_own_batches(tiny_ref, adapters, monkeypatch) -> None:
    eng = _engine(tiny_ref, adapters, names=("a", "dora"))
    assert eng.pool.mixable("a") and not eng.pool.mixable("dora") and eng.pool.mixable(None)
    reqs = [
        GenRequest(messages=_msgs(q), adapter=ad, max_new_tokens=6)
        for q, ad in zip(QUESTIONS[:6], ("dora", "a", None, "dora", "a", None), strict=True)
    ]
    alone = _alone(eng, reqs)
    assert alone[0].text != alone[2].text  # DoRA changes the answer
    spy = ForwardSpy(eng, monkeypatch)
    _same(eng.generate(reqs), alone)
    dora = spy.slots["dora"]
    assert spy.mixed() and all(dora not in c[2] for c in spy.mixed())
    assert any(spy.names(c[2]) == {"a", None} for c in spy.mixed())
    assert any(c[2] is None and c[0] in (1, 2) for c in spy.calls)  # DoRA's own batch


def test_saved_modules_stay_out_of_other_adapters_mixed_rows(
    tiny_ref, adapters, monkeypatch
) -> None:
    """An adapter with ``modules_to_save`` runs alone; while it is resident, a mixed batch of
    other adapters must not see its saved module (PEFT's wrapper follows the active adapter)."""
    eng = _engine(tiny_ref, adapters, names=("a", "b", "saved"))
    assert not eng.pool.mixable("saved") and eng.pool.mixable("b")
    reqs = [
        GenRequest(messages=_msgs(q), adapter=ad, max_new_tokens=6)
        for q, ad in zip(QUESTIONS[:5], ("saved", "a", None, "b", "saved"), strict=True)
    ]
    alone = _alone(eng, reqs)
    base = eng.generate([GenRequest(_msgs(QUESTIONS[0]), max_new_tokens=6)])[0]
    assert alone[0].text != base.text  # the saved module changes the answer
    eng.generate([reqs[0]])  # the saved adapter is the last one switched on
    spy = ForwardSpy(eng, monkeypatch)
    _same(eng.generate(reqs), alone)
    saved = spy.slots["saved"]
    assert spy.mixed() and all(saved not in c[2] for c in spy.mixed())


def test_fill_batches_caps_rows_and_adapters() -> None:
    adapters = {0: "a", 1: "b", 2: None, 3: "c", 4: "a", 5: "c", 6: None}
    assert fill_batches(list(range(7)), adapters, 4, 2) == [[0, 1, 2, 4], [3, 5, 6]]
    assert fill_batches(list(range(7)), adapters, 16, 1) == [[0, 2, 4, 6], [1], [3, 5]]
    assert fill_batches([], adapters, 4, 2) == []


def test_prefill_shares_a_prefix_per_group_not_across_groups() -> None:
    """decoding alone: a fake model whose "adapter" shifts every key, so a prefix shared across
    groups would hand one group the other's cache."""
    seen: list[tuple[int, list[Any] | None]] = []

    def forward(ids, mask, pos, kv, last_only=True, groups=None):
        seen.append((ids.shape[0], groups))
        b = ids.shape[0]
        shift = torch.tensor([0.0 if g in (None, "x") else 1.0 for g in groups or [None] * b])
        keys = (ids.float() + shift[:, None])[:, None, :, None]  # (b, heads=1, s, dim=1)
        kv.update(keys, keys, 0)
        # logits: the sum of everything this row can attend to, as one-hot over 1000 ids
        total = kv.layers[0].keys[:, 0, :, 0].mul(mask).sum(-1).long() % 1000
        return torch.nn.functional.one_hot(total, 1000).float()

    from transformers import LlamaConfig

    config = LlamaConfig(num_hidden_layers=1, num_attention_heads=1, hidden_size=8)
    prompts = [[*range(1, 12), 20 + r] for r in range(4)]
    groups = ["x", "y", "x", "y"]
    logits, _, _, _ = decoding.prefill(forward, config, prompts, 0, groups=groups)
    assert seen[0] == (2, ["x", "y"])  # the prefix once per group, not once per row
    assert seen[1] == (4, groups)
    want = [sum(p) + (len(p) if g == "y" else 0) for p, g in zip(prompts, groups, strict=True)]
    assert logits.argmax(-1).tolist() == want


def test_4bit_base_mixes_too(tiny_ref, adapters, monkeypatch) -> None:
    """bitsandbytes' 4-bit LoRA layers have a mixed path of their own (NF4 runs on the CPU)."""
    eng = _engine(tiny_ref, adapters, names=("a", "b"), quantize_4bit=True)
    assert eng.quantize_4bit and eng.pool.mixable("a")
    reqs = [
        GenRequest(messages=_msgs(q), adapter=ad, max_new_tokens=6)
        for q, ad in zip(QUESTIONS[:6], ("a", "b", None, "a", "b", None), strict=True)
    ]
    alone = _alone(eng, reqs)
    spy = ForwardSpy(eng, monkeypatch)
    _same(eng.generate(reqs), alone)
    assert any(spy.names(c[2]) == {"a", "b", None} for c in spy.mixed())
