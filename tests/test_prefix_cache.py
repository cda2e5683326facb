"""The prefix cache: a shared prompt prefix's keys and values, kept per adapter across batches.

What must hold: a later batch (or a request alone) starts after a stored prefix, so its prefill
runs only the rows' own suffixes; a batch of one row per adapter stores every adapter's copy; the
answers are what the same requests give without the cache; an adapter replaced under its name
never reuses the old weights' keys; the cache keeps within its byte budget.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from test_mixed_adapters import QUESTIONS, ForwardSpy, _engine, _msgs, _same
from test_mixed_adapters import adapters as adapters  # a fixture: pytest finds it here
from test_mixed_adapters import tiny_ref as tiny_ref  # a fixture
from tunewise.runtime import decoding
from tunewise.runtime.cache import GenCache
from tunewise.runtime.engine import GenRequest
from tunewise.runtime.prefix_cache import PrefixCache


def _reqs(adapters_: tuple[str | None, ...], questions: list[str], n: int = 6) -> list[GenRequest]:
    return [
        GenRequest(messages=_msgs(q), adapter=ad, max_new_tokens=n)
        for q, ad in zip(questions, adapters_, strict=True)
    ]


def _shared_len(eng, reqs: list[GenRequest]) -> int:
    return decoding._common_prefix(eng.encode([eng.render(r.messages) for r in reqs]))


def test_a_later_batch_starts_after_the_stored_prefix(tiny_ref, adapters, monkeypatch) -> None:
    eng = _engine(tiny_ref, adapters)
    first = _reqs(("a", "b", "a"), QUESTIONS[:3])
    shared = _shared_len(eng, first)
    assert shared >= 3 * decoding.MIN_SHARED_PREFIX
    eng.generate(first)
    assert len(eng.prefix_cache) == 2  # one copy per adapter of the batch
    later = _reqs(("b", "a"), QUESTIONS[3:5])
    spy = ForwardSpy(eng, monkeypatch)
    eng.generate(later)
    prompts = eng.encode([eng.render(r.messages) for r in later])
    # no prefix pass: the first forward is the suffixes' prefill, after the stored prefix
    batch, width, _ = spy.calls[0]
    assert batch == 2 and width == max(len(p) for p in prompts) - shared
    assert eng.prefix_cache.hits >= 2


def test_one_row_per_adapter_stores_every_adapters_copy(tiny_ref, adapters, monkeypatch) -> None:
    """Within a batch of one row per adapter there is nothing to share, but each copy is
    stored: the next such batch runs only its suffixes."""
    eng = _engine(tiny_ref, adapters)
    eng.generate(_reqs((None, "a", "b", "c"), QUESTIONS[:4]))
    assert len(eng.prefix_cache) == 4  # the base's and three adapters'
    spy = ForwardSpy(eng, monkeypatch)
    reqs = _reqs(("c", "b", "a", None), QUESTIONS[4:7] + QUESTIONS[:1])
    eng.generate(reqs)
    prompts = eng.encode([eng.render(r.messages) for r in reqs])
    shared = _shared_len(eng, reqs)
    assert spy.calls[0][1] == max(len(p) for p in prompts) - shared
    assert spy.calls[0][0] == 4


def test_a_request_alone_starts_after_what_the_one_before_shared(tiny_ref, adapters, monkeypatch):
    """One client asking in turn (no batch to share within): each request alone stores its
    prompt, and the next one starts after the part it shares with it, the system prompt here,
    though the stored prompt goes on with another question."""
    eng = _engine(tiny_ref, adapters)
    first, second = (_reqs(("a",), [q], n=6) for q in QUESTIONS[1:3])
    eng.generate(first)
    assert len(eng.prefix_cache) == 1
    spy = ForwardSpy(eng, monkeypatch)
    eng.generate(second)
    shared = _shared_len(eng, first + second)
    assert shared >= 3 * decoding.MIN_SHARED_PREFIX
    prompt = eng.encode([eng.render(second[0].messages)])[0]
    assert spy.calls[0][:2] == (1, len(prompt) - shared)  # only its own question's tokens
    assert eng.prefix_cache.hits == 1
    other = _reqs(("b",), QUESTIONS[3:4], n=6)  # b has no copy: runs the shared part apart once
    spy.calls.clear()
    eng.generate(other)
    assert [c[1] for c in spy.calls[:2]] == [
        shared,
        len(eng.encode([eng.render(other[0].messages)])[0]) - shared,
    ]


def test_a_conversation_starts_after_its_earlier_turns(tiny_ref, adapters, monkeypatch):
    """The next turn of a chat repeats the earlier ones: its prefill runs only what came after
    the last prompt (the answer and the new question)."""
    eng = _engine(tiny_ref, adapters)
    turn = _msgs(QUESTIONS[0])
    answer = eng.generate([GenRequest(messages=turn, adapter="c", max_new_tokens=6)])[0].text
    later = [*turn, {"role": "assistant", "content": answer}, {"role": "user", "content": "Why?"}]
    before = eng.encode([eng.render(turn)])[0]
    now = eng.encode([eng.render(later)])[0]
    assert now[: len(before) - 1] == before[:-1]  # the template repeats the first turn
    spy = ForwardSpy(eng, monkeypatch)
    got = eng.generate([GenRequest(messages=later, adapter="c", max_new_tokens=6)])
    assert spy.calls[0][1] <= len(now) - len(before) + 1
    want = _engine(tiny_ref, adapters, prefix_cache_mb=0).generate(
        [GenRequest(messages=later, adapter="c", max_new_tokens=6)]
    )
    _same(got, want)


@pytest.mark.usefixtures("torch_threads")
def test_answers_equal_those_without_the_cache(tiny_ref, adapters) -> None:
    """Several batches in a row (the cache warm from the first), rows alone, mixed adapters and
    the base: every answer is the one an engine without a prefix cache gives."""
    cached = _engine(tiny_ref, adapters)
    plain = _engine(tiny_ref, adapters, prefix_cache_mb=0)
    assert plain.prefix_cache is None
    rounds = [
        _reqs(("a", "b", None, "c", "a"), QUESTIONS[:5], n=8),
        _reqs(("c", "c", "b"), QUESTIONS[4:7], n=8),
        _reqs(("b",), QUESTIONS[6:7], n=8),  # one request alone: the stored prefix serves it
        [GenRequest(messages=_msgs(q, "Answer briefly."), adapter="a") for q in QUESTIONS[:2]],
    ]
    for reqs in rounds:
        _same(cached.generate(reqs), plain.generate(reqs))
    assert cached.prefix_cache.hits > 0 and cached.prefix_cache.misses > 0
    # answers differ per adapter, so the equality above is not trivial
    texts = {r.text for r in plain.generate(_reqs(("a", "b", "c"), QUESTIONS[:1] * 3, n=8))}
    assert len(texts) == 3


def test_an_adapter_replaced_under_its_name_gets_new_keys(tiny_ref, adapters) -> None:
    """The cache keys a copy by the adapter's weight hash, not its name."""
    eng = _engine(tiny_ref, adapters)
    reqs = _reqs(("a", "a"), QUESTIONS[:2], n=8)
    eng.generate(reqs)
    eng.load_adapter("a", adapters["b"])  # "a" now has b's weights
    fresh = _engine(tiny_ref, adapters, names=("b",), prefix_cache_mb=0)
    want = fresh.generate(_reqs(("b", "b"), QUESTIONS[:2], n=8))
    _same(eng.generate(reqs), want)


def test_an_adapter_whose_config_changed_in_place_gets_new_keys(tiny_ref, adapters, tmp_path):
    """Same weights file, same folder, another lora_alpha: other answers. Reloading it must not
    keep the old adapter, and neither cache may hand back what the old scale computed."""
    own = tmp_path / "a"
    shutil.copytree(adapters["a"], own)
    eng = _engine(tiny_ref, {"a": own}, names=("a",), cache=GenCache(tmp_path / "gen.db"))
    reqs = _reqs(("a", "a"), QUESTIONS[:2], n=8)
    before = eng.generate(reqs)
    config = own / "adapter_config.json"
    cfg = json.loads(config.read_text())
    config.write_text(json.dumps({**cfg, "lora_alpha": cfg["lora_alpha"] * 4}))
    eng.load_adapter("a", own)
    want = _engine(tiny_ref, {"a": own}, names=("a",), prefix_cache_mb=0).generate(reqs)
    assert [r.text for r in want] != [r.text for r in before]  # the scale matters here
    _same(eng.generate(reqs), want)


def test_a_long_prefix_of_the_batch_beats_a_short_stored_one(tiny_ref, adapters) -> None:
    """A stored system prompt does not stop a batch from sharing a longer common block (a
    few-shot example after the system prompt): that one is run once and stored too."""
    eng = _engine(tiny_ref, adapters)
    eng.generate(_reqs(("a", "a"), QUESTIONS[:2]))
    short = eng.prefix_cache.longest(eng.encode([eng.render(_msgs("x y z"))]))
    block = "Example ticket: the parcel never came and the tracking page shows nothing at all."
    reqs = [
        GenRequest(messages=_msgs(f"{block}\nTicket: {q}"), adapter="a", max_new_tokens=4)
        for q in QUESTIONS[:4]
    ]
    eng.generate(reqs)
    longer = eng.prefix_cache.longest(eng.encode([eng.render(r.messages) for r in reqs]))
    assert len(longer) > len(short) + 10


@pytest.mark.usefixtures("torch_threads")
def test_a_batch_with_a_sampled_row_runs_without_the_cache(tiny_ref, adapters, monkeypatch):
    """A seeded sample must see the same logits whatever the cache holds (near-equal logits swap
    places in the sorted order it draws from on a last-bit difference): its batch neither reads
    nor fills the cache, and runs the prompts as an engine without one does."""
    eng = _engine(tiny_ref, adapters)
    sampled = GenRequest(messages=_msgs(QUESTIONS[0]), adapter="a", temperature=1.0, seed=3)
    greedy = _reqs(("a", "b"), QUESTIONS[1:3])
    eng.generate([sampled, *greedy])
    assert len(eng.prefix_cache) == 0 and eng.prefix_cache.misses == 0
    eng.generate(greedy)  # now the cache holds the system prompt for a and b
    assert len(eng.prefix_cache) == 2
    spy = ForwardSpy(eng, monkeypatch)
    again = GenRequest(messages=_msgs(QUESTIONS[3]), adapter="a", temperature=1.0, seed=3)
    eng.generate([again])
    prompt = eng.encode([eng.render(again.messages)])[0]
    assert spy.calls[0][:2] == (1, len(prompt))  # the whole prompt, not the suffix
    assert eng.prefix_cache.hits == 0


def test_the_cache_stays_within_its_bytes_and_drops_the_oldest() -> None:
    layer = (torch.zeros(1, 2, 10, 4), torch.zeros(1, 2, 10, 4))  # 320 bytes each
    size = 2 * 320
    cache = PrefixCache(max_bytes=2 * size)
    cache.put("x", (1, 2, 3), [layer])
    cache.put("y", (1, 2, 3), [layer])
    assert cache.get("x", (1, 2, 3)) is not None  # x is now the most recently used
    cache.put("z", (1, 2, 3, 4), [layer])
    assert cache.get("y", (1, 2, 3)) is None and len(cache) == 2 and cache.bytes == 2 * size
    cache.put("big", (9,), [layer, layer, layer])  # larger than the whole budget: not kept
    assert cache.get("big", (9,)) is None and cache.bytes == 2 * size
    with pytest.raises(ValueError):
        PrefixCache(max_bytes=-1)


def test_longest_leaves_every_prompt_a_token_of_its_own() -> None:
    layer = [(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))]
    cache = PrefixCache(max_bytes=1 << 20)
    cache.put("g", (1, 2), layer)
    cache.put("g", (1, 2, 3, 4), layer)
    assert cache.longest([[1, 2, 3, 4, 5], [1, 2, 3, 4, 6]]) == (1, 2, 3, 4)
    # all of (1, 2, 3, 4) would leave no own token: its start serves
    assert cache.longest([[1, 2, 3, 4]]) == (1, 2, 3)


def test_the_start_of_a_stored_prompt_serves_a_prompt_that_goes_elsewhere() -> None:
    """A prefix's keys and values do not depend on what follows it (causal attention): the
    start of a longer entry is served, sliced, to its own identity only."""
    keys = torch.arange(6.0).reshape(1, 1, 6, 1)
    cache = PrefixCache(max_bytes=1 << 20)
    cache.put("g", (1, 2, 3, 4, 5, 6), [(keys, keys + 10)])
    assert cache.longest([[1, 2, 3, 9, 9], [1, 2, 3, 4, 8]]) == (1, 2, 3)
    assert cache.longest([[1, 2, 7]], minimum=3) == ()  # shares 2 tokens: too few to bother
    ((k, v),) = cache.get("g", (1, 2, 3))
    assert k.flatten().tolist() == [0.0, 1.0, 2.0] and v.flatten().tolist() == [10.0, 11.0, 12.0]
    assert cache.get("other", (1, 2, 3)) is None
    assert cache.get("g", (1, 2, 9)) is None
    # a shorter entry of the same identity is dropped when a longer one starts with it
    cache.put("h", (1, 2), [(keys[:, :, :2], keys[:, :, :2])])
    cache.put("h", (1, 2, 3, 4), [(keys[:, :, :4], keys[:, :, :4])])
    assert len(cache) == 2 and cache.get("h", (1, 2)) is not None
    assert cache.longest([[1, 2, 3, 4, 5], [1, 2, 9]]) == (1, 2)
    assert cache.longest([[7, 1, 2]]) == ()


def test_serve_passes_its_option_to_the_engine(monkeypatch) -> None:
    """`tunewise serve --prefix-cache-mb N` sizes the engine's cache; a negative size is exit 2."""
    from typer.testing import CliRunner

    from tunewise.cli import app
    from tunewise.serve import app as serve_app

    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def engine(ref, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(serve_app, "Engine", engine)
    runner = CliRunner()
    out = runner.invoke(app, ["serve", "--prefix-cache-mb", "32"])
    assert isinstance(out.exception, Stop) and seen["prefix_cache_mb"] == 32
    bad = runner.invoke(app, ["serve", "--prefix-cache-mb", "-1"])
    assert bad.exit_code == 2 and "--prefix-cache-mb" in bad.output
