"""Engine: batched greedy generation equals one-at-a-time generate; adapters, stops, scores."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tunewise.errors import UserError
from tunewise.runtime import decoding, models
from tunewise.runtime.cache import GenCache
from tunewise.runtime.engine import (
    Engine,
    GenRequest,
    GenResult,
    PromptTooLongError,
    engine_for_run,
    max_new_tokens_for,
)

SYSTEM = (
    "You are a support triage assistant. Reply with the category and the priority of the ticket."
)
QUESTIONS = [
    "My invoice is wrong",
    "The app crashes every time I open the settings page on my phone, please help",
    "hi",
    "Can I change the email address on my account?",
    "Refund please",
    "Your service has been down for two hours and our whole team is blocked right now",
]


def _msgs(q: str, system: str | None = SYSTEM) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": q}]


@pytest.fixture(scope="module")
def tiny_ref(lively_dir: Path) -> models.ModelRef:
    return models.resolve(str(lively_dir))


@pytest.fixture(scope="module")
def engine(tiny_ref) -> Engine:
    return Engine(tiny_ref, batch_size=4, max_loaded_adapters=2)


def _make_adapter(base_dir: Path, out: Path, seed: int, weight_hash: str) -> Path:
    """A random (non-zero) LoRA adapter on the tiny model, with a run.json naming its base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(base, cfg)
    with torch.no_grad():  # large enough to change greedy outputs
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.mul_(4.0)
    peft_model.save_pretrained(out)
    (out / "run.json").write_text(
        json.dumps(
            {
                "status": "completed",
                "method": "lora",
                "base_model": {"name": "tiny", "path": str(base_dir), "weight_hash": weight_hash},
            }
        )
    )
    return out


@pytest.fixture(scope="module")
def adapters(lively_dir: Path, tiny_ref, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        n: _make_adapter(lively_dir, root / n, seed, tiny_ref.weight_hash)
        for n, seed in (("a", 1), ("b", 2), ("c", 3))
    }


def _reference(model, engine: Engine, messages, max_new: int) -> tuple[str, list[int]]:
    """One prompt at a time through transformers' own generate: the ground truth."""
    ids = engine.tokenizer(engine.render(messages), add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **ids, do_sample=False, max_new_tokens=max_new, pad_token_id=engine.pad_id
        )
    gen = out[0, ids["input_ids"].shape[1] :].tolist()
    return engine.tokenizer.decode(gen, skip_special_tokens=True), gen


@pytest.mark.parametrize("shared", [True, False], ids=["shared-prefix", "distinct-prompts"])
def test_batched_equals_one_at_a_time(engine: Engine, shared: bool, monkeypatch) -> None:
    # distinct system prompts leave no common prefix worth sharing: the plain left-padding path
    reqs = [
        GenRequest(messages=_msgs(q, SYSTEM if shared else q[::-1]), max_new_tokens=10)
        for q in QUESTIONS
    ]
    prefixed: list[int] = []
    new_cache = decoding.new_cache

    def spy(config, prefix=None, rows=1):
        if prefix is not None:
            prefixed.append(rows)
        return new_cache(config, prefix, rows)

    monkeypatch.setattr(decoding, "new_cache", spy)
    got = engine.generate(reqs)
    assert bool(prefixed) == shared
    assert len(got) == len(reqs)
    for req, res in zip(reqs, got, strict=True):
        text, gen = _reference(engine._base, engine, req.messages, 10)
        assert res.text == text
        assert res.completion_tokens == len(gen)
        assert res.prompt_tokens == engine.prompt_tokens(req.messages)
        assert res.finish_reason == ("stop" if gen[-1] in engine.eos_ids else "length")


def test_stop_string_trims_and_stream_matches(engine: Engine) -> None:
    free = engine.generate([GenRequest(messages=_msgs(QUESTIONS[1]), max_new_tokens=12)])[0]
    assert len(free.text) > 6
    stop = free.text[3:6]  # a stop string that occurs in the free output
    cut = free.text.find(stop)
    req = GenRequest(messages=_msgs(QUESTIONS[1]), max_new_tokens=12, stop=[stop])
    res = engine.generate([req])[0]
    assert res.text == free.text[:cut]
    assert res.finish_reason == "stop"
    assert res.completion_tokens < free.completion_tokens or cut + len(stop) == len(free.text)
    assert "".join(engine.stream(req)) == res.text
    no_stop = GenRequest(messages=_msgs(QUESTIONS[1]), max_new_tokens=12)
    assert "".join(engine.stream(no_stop)) == free.text


def test_eos_stops_a_row_and_others_continue(engine: Engine, monkeypatch) -> None:
    reqs = [GenRequest(messages=_msgs(q), max_new_tokens=8) for q in QUESTIONS[:3]]
    refs = [_reference(engine._base, engine, r.messages, 8)[1] for r in reqs]
    gen0 = refs[0]
    # Pretend a token the first row generates (for the first time at step k) ends the turn.
    k = next(i for i in range(1, len(gen0)) if gen0[i] not in gen0[:i])
    monkeypatch.setattr(engine, "eos_ids", frozenset({gen0[k]}))
    got = engine.generate(reqs)
    assert got[0].finish_reason == "stop" and got[0].completion_tokens == k + 1
    assert got[0].text == engine.decode(gen0[:k])
    for res, g in zip(got[1:], refs[1:], strict=True):
        cut = g.index(gen0[k]) + 1 if gen0[k] in g else len(g)
        assert res.completion_tokens == cut
        assert res.text == engine.decode(
            g[:cut] if cut == len(g) and gen0[k] not in g else g[: cut - 1]
        )


def test_adapters_batched_per_adapter(engine: Engine, adapters, tiny_ref) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    before = engine.generate(
        [GenRequest(messages=_msgs(q), max_new_tokens=6) for q in QUESTIONS[:3]]
    )
    engine.load_adapter("a", adapters["a"])
    engine.load_adapter("b", adapters["b"])
    assert set(engine.adapters()) == {"a", "b"}
    reqs = [
        GenRequest(messages=_msgs(q), adapter=ad, max_new_tokens=6)
        for q in QUESTIONS[:3]
        for ad in ("a", None, "b")
    ]
    got = engine.generate(reqs)
    # the base is unchanged by loaded adapters
    assert [r.text for r in got[1::3]] == [r.text for r in before]
    for name in ("a", "b"):
        ref_model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_ref.path), adapters[name]
        ).eval()
        mine = [r for r, q in zip(got, reqs, strict=True) if q.adapter == name]
        for res, q in zip(mine, QUESTIONS[:3], strict=True):
            assert res.text == _reference(ref_model, engine, _msgs(q), 6)[0]
    assert [r.text for r in got[0::3]] != [r.text for r in got[2::3]]  # two different adapters


def test_lru_evicts_and_reloads(tiny_ref, adapters) -> None:
    eng = Engine(tiny_ref, batch_size=4, max_loaded_adapters=1)
    eng.load_adapter("a", adapters["a"])
    req_a = GenRequest(messages=_msgs(QUESTIONS[0]), adapter="a", max_new_tokens=6)
    first = eng.generate([req_a])[0].text
    eng.load_adapter("b", adapters["b"])
    assert eng.loaded_adapters() == ["b"] and set(eng.adapters()) == {"a", "b"}
    assert eng.generate([req_a])[0].text == first  # reloaded from disk on demand
    assert eng.loaded_adapters() == ["a"]
    eng.unload_adapter("a")
    with pytest.raises(UserError, match="unknown adapter 'a'"):
        eng.generate([req_a])


def test_refuses_adapter_for_another_base(engine: Engine, adapters, tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "other"
    shutil.copytree(adapters["a"], other)
    run = json.loads((other / "run.json").read_text())
    run["base_model"]["weight_hash"] = "0" * 64
    (other / "run.json").write_text(json.dumps(run))
    with pytest.raises(UserError, match="refusing"):
        engine.load_adapter("other", other)
    assert "other" not in engine.adapters()
    with pytest.raises(UserError, match="refusing"):
        engine.load_adapter("other2", adapters["a"], base_hash="f" * 64)
    (other / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match="safetensors"):
        engine.load_adapter("other3", other)


def test_score_continuations_matches_full_forward(engine: Engine, adapters) -> None:
    engine.load_adapter("a", adapters["a"])
    labels = ["billing", "technical issue", "account", "x"]
    for adapter, eot in ((None, True), ("a", True), (None, False)):
        got = engine.score_continuations(
            _msgs(QUESTIONS[0]), labels, adapter=adapter, end_of_turn=eot
        )
        prompt = engine.encode([engine.render(_msgs(QUESTIONS[0]))])[0]
        for label, score in zip(labels, got, strict=True):
            cont = engine.encode([label + (engine.end_of_turn if eot else "")])[0]
            ids = torch.tensor([prompt + cont])
            with torch.inference_mode(), engine.pool.activated(adapter) as model:
                logits = model(input_ids=ids).logits[0].float()
            lp = torch.log_softmax(logits, -1)
            want = sum(float(lp[len(prompt) - 1 + k, t]) for k, t in enumerate(cont))
            assert score == pytest.approx(want, abs=1e-3)
    assert engine.end_of_turn == "<|im_end|>"


def test_cache_makes_rerun_free(tiny_ref, monkeypatch) -> None:
    cache = GenCache()
    eng = Engine(tiny_ref, batch_size=4, cache=cache)
    reqs = [GenRequest(messages=_msgs(q), max_new_tokens=5) for q in QUESTIONS[:4]]
    first = eng.generate(reqs)
    assert not any(r.cached for r in first)
    scores = eng.score_continuations(_msgs(QUESTIONS[0]), ["a", "b"])

    def boom(*a, **k):
        raise AssertionError("the model ran on a cached rerun")

    monkeypatch.setattr(eng, "_forward", boom)
    again = Engine.generate(eng, reqs)
    assert all(r.cached for r in again)
    assert [r.text for r in again] == [r.text for r in first]
    assert eng.score_continuations(_msgs(QUESTIONS[0]), ["a", "b"]) == scores
    # a different decoding parameter is a different key
    with pytest.raises(AssertionError, match="cached rerun"):
        eng.generate([GenRequest(messages=_msgs(QUESTIONS[0]), max_new_tokens=6)])
    assert GenCache().stats()["entries"] == {"gen": 4, "score": 1}  # persisted in the SQLite file


def test_threads_get_the_same_answers(engine: Engine, adapters) -> None:
    engine.load_adapter("a", adapters["a"])
    engine.load_adapter("b", adapters["b"])
    jobs = {
        ad: [GenRequest(messages=_msgs(q), adapter=ad, max_new_tokens=6) for q in QUESTIONS[:4]]
        for ad in ("a", "b", None)
    }
    want = {ad: [r.text for r in engine.generate(reqs)] for ad, reqs in jobs.items()}
    got: dict = {}
    errors: list[BaseException] = []

    def work(ad):
        try:
            got[ad] = [r.text for r in engine.generate(jobs[ad])]
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(ad,)) for ad in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and got == want


def test_limits_and_max_new_tokens_helper(engine: Engine) -> None:
    with pytest.raises(PromptTooLongError):
        engine.generate([GenRequest(messages=_msgs("word " * 1100), max_new_tokens=4)])
    with pytest.raises(UserError):
        engine.generate([GenRequest(messages=[{"role": "user"}])])
    answers = ["Category: billing\nPriority: high", "Category: account\nPriority: low"]
    longest = max(len(engine.encode([a])[0]) for a in answers)
    n = max_new_tokens_for(engine.tokenizer, answers)
    assert n == longest + 8 + 1
    assert max_new_tokens_for(engine.tokenizer, []) == 64
    assert engine.generate([]) == []


def test_engine_for_run(engine: Engine, adapters, lively_dir: Path, tmp_path: Path) -> None:
    eng, name = engine_for_run(adapters["b"], engine, name="b-run")
    assert eng is engine and name == "b-run" and "b-run" in engine.adapters()
    full = tmp_path / "fullrun"
    import shutil

    shutil.copytree(lively_dir, full / "model")
    eng2, name2 = engine_for_run(full)
    assert name2 is None and eng2 is not engine and eng2.ref.path == (full / "model").resolve()
    with pytest.raises(UserError):
        engine_for_run(tmp_path / "nothing")


def _drain(stream) -> tuple[list[str], GenResult]:
    """The deltas of ``Engine.stream`` and its return value."""
    deltas = []
    while True:
        try:
            deltas.append(next(stream))
        except StopIteration as stop:
            return deltas, stop.value


def test_stream_returns_the_same_result_as_generate(engine: Engine) -> None:
    free = engine.generate([GenRequest(messages=_msgs(QUESTIONS[1]), max_new_tokens=12)])[0]
    assert free.finish_reason == "length" and len(free.text) > 6
    stopped = GenRequest(messages=_msgs(QUESTIONS[1]), max_new_tokens=12, stop=[free.text[3:6]])
    for req, reason in (
        (GenRequest(messages=_msgs(QUESTIONS[1]), max_new_tokens=12), "length"),
        (stopped, "stop"),
    ):
        deltas, result = _drain(engine.stream(req))
        assert result == engine.generate([req])[0]
        assert result.finish_reason == reason and "".join(deltas) == result.text
    assert _drain(engine.stream(stopped))[1].completion_tokens < free.completion_tokens


def test_one_context_check_for_generate_stream_and_score(engine: Engine, monkeypatch) -> None:
    msgs = _msgs(QUESTIONS[0])
    n = engine.prompt_tokens(msgs)
    monkeypatch.setattr(engine, "context_length", n + 2)
    fits, over = (GenRequest(messages=msgs, max_new_tokens=k) for k in (2, 3))
    assert engine.generate([fits])[0].completion_tokens <= 2
    assert _drain(engine.stream(fits))[1].completion_tokens <= 2
    with pytest.raises(PromptTooLongError, match=rf"request 1: prompt of {n} tokens \+ max_new"):
        engine.generate([fits, over])
    with pytest.raises(PromptTooLongError, match=f"exceeds the context of {n + 2} tokens"):
        _drain(engine.stream(over))
    two, three = "ab", "a b c"  # label token counts, without the end-of-turn marker
    assert [len(engine.encode([t])[0]) for t in (two, three)] == [1, 3]
    assert len(engine.score_continuations(msgs, [two], end_of_turn=False)) == 1
    with pytest.raises(PromptTooLongError, match="label tokens 3"):
        engine.score_continuations(msgs, [two, three], end_of_turn=False)


def test_pool_pins_outlive_the_bound_and_shrink_back(tiny_ref, adapters) -> None:
    eng = Engine(tiny_ref, batch_size=4, max_loaded_adapters=1)
    pool = eng.pool
    eng.load_adapter("a", adapters["a"])
    with pool.pinned("a"):
        eng.load_adapter("b", adapters["b"])  # a is in use: b goes over the bound, a stays
        assert pool.loaded() == ["a", "b"]
        with pytest.raises(UserError, match="unknown adapter 'zz'"), pool.pinned("zz"):
            pass
    assert pool.loaded() == ["b"]  # back within the bound once the pin is gone: LRU a left
    req_a = GenRequest(messages=_msgs(QUESTIONS[0]), adapter="a", max_new_tokens=4)
    eng.generate([req_a])
    assert pool.loaded() == ["a"] and set(pool.names()) == {"a", "b"}
    assert pool.sha256("a") != pool.sha256("b") and pool.sha256(None) == ""


def test_pool_under_concurrency_never_evicts_an_adapter_in_use(tiny_ref, adapters) -> None:
    """Four threads, three adapters and the base, room for one adapter: every answer equals the
    one-thread answer, no adapter is evicted while pinned, and the bound holds at the end."""
    eng = Engine(tiny_ref, batch_size=2, max_loaded_adapters=1)
    pool = eng.pool
    for name in ("a", "b", "c"):
        eng.load_adapter(name, adapters[name])
    jobs = {
        ad: [GenRequest(messages=_msgs(q), adapter=ad, max_new_tokens=4) for q in QUESTIONS[:3]]
        for ad in ("a", "b", "c", None)
    }
    want = {ad: [r.text for r in eng.generate(reqs)] for ad, reqs in jobs.items()}
    evict = pool._evict_locked
    bad: list[str] = []

    def checked_evict(entry):
        if pool._pins.get(entry.name):
            bad.append(f"evicted {entry.name} while pinned")
        evict(entry)

    pool._evict_locked = checked_evict  # type: ignore[method-assign]
    barrier = threading.Barrier(len(jobs))

    def work(ad) -> list:
        barrier.wait()  # all four start together
        texts: list = [[r.text for r in eng.generate(jobs[ad])] for _ in range(2)]
        return [*texts, "".join(_drain(eng.stream(jobs[ad][0]))[0])]

    with ThreadPoolExecutor(len(jobs)) as threads:  # .result() re-raises a thread's exception
        futures = {ad: threads.submit(work, ad) for ad in jobs}
        got = {ad: f.result(timeout=300) for ad, f in futures.items()}
    assert not bad
    assert got == {ad: [w, w, w[0]] for ad, w in want.items()}
    assert not pool._pins and len(pool.loaded()) <= 1


def test_base_step_right_after_evicting_the_last_resident_adapter(tiny_ref, adapters) -> None:
    """Room for one adapter: loading b evicts a, the only resident one, and PEFT's wrapper kept
    naming a's deleted slot as active; a base step next (no adapter switch in between) looked
    that name up and raised KeyError. The base answer must equal the plain base model's, also
    once every adapter is unloaded."""
    reqs = [GenRequest(messages=_msgs(q), max_new_tokens=4) for q in QUESTIONS[:2]]
    plain = [r.text for r in Engine(tiny_ref, batch_size=2).generate(reqs)]
    eng = Engine(tiny_ref, batch_size=2, max_loaded_adapters=1)
    eng.load_adapter("a", adapters["a"])
    eng.load_adapter("b", adapters["b"])  # evicts a before b is loaded: no adapter resident
    assert eng.loaded_adapters() == ["b"]
    assert [r.text for r in eng.generate(reqs)] == plain
    eng.unload_adapter("b")  # nothing resident at all now
    assert [r.text for r in eng.generate(reqs)] == plain


@pytest.mark.slow
def test_real_model_batched_equals_generate_and_scores(real_model) -> None:
    eng = Engine(real_model, batch_size=4)
    reqs = [GenRequest(messages=_msgs(q), max_new_tokens=8) for q in QUESTIONS[:3]]
    got = eng.generate(reqs)
    for req, res in zip(reqs, got, strict=True):
        assert res.text == _reference(eng._base, eng, req.messages, 8)[0]
    scores = eng.score_continuations(
        [{"role": "user", "content": "What is the capital of France? Answer with one word."}],
        ["Paris", "Banana"],
    )
    assert scores[0] > scores[1]
