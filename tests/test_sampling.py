"""Sampling: ``temperature``, ``top_p`` and ``seed`` on a GenRequest and through the server.

Temperature 0 (the default) is the greedy decoding every other test holds the engine to. Above
0, a row draws from softmax(logits / T) cut to the ``top_p`` nucleus with a generator of its own:
the same seed gives the same answer alone or in any batch, and an unseeded sample is never read
from nor written to the generation cache. The tiny random model's next-token distribution is
nearly flat over the whole vocabulary, so at temperature 1 two seeds part within a few tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from _serve_helpers import running
from tunewise.errors import UserError
from tunewise.runtime import grammar, models
from tunewise.runtime.backend import generation_params
from tunewise.runtime.cache import GenCache
from tunewise.runtime.engine import Engine, GenRequest
from tunewise.runtime.tool_calls import parse_reply
from tunewise.serve.app import ServeSettings, create_app

PROMPTS = [
    "Where is my parcel?",
    "My invoice is wrong",
    "Can I change the email address on my account?",
    "The app crashes every time I open the settings page",
]
NEW = 16


def _msgs(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


def _req(q: str, **kw) -> GenRequest:
    return GenRequest(_msgs(q), max_new_tokens=NEW, **kw)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    return Engine(models.resolve(str(tiny_model_dir)), batch_size=8)


def _texts(engine: Engine, requests: list[GenRequest]) -> list[str]:
    return [r.text for r in engine.generate(requests)]


def test_temperature_zero_is_todays_greedy_answer_whatever_top_p_and_seed(engine: Engine) -> None:
    greedy = _texts(engine, [_req(q) for q in PROMPTS])
    zero = _texts(engine, [_req(q, temperature=0.0, top_p=0.3, seed=5) for q in PROMPTS])
    assert zero == greedy
    # A greedy row beside sampled rows answers as it does alone.
    mixed = [_req(q, temperature=1.0, seed=i) for i, q in enumerate(PROMPTS[1:])]
    [beside, *_] = _texts(engine, [_req(PROMPTS[0]), *mixed])
    assert beside == greedy[0]


@pytest.mark.usefixtures("torch_threads")
def test_the_same_seed_gives_the_same_answer_alone_and_in_a_batch(engine: Engine) -> None:
    sampled = [_req(q, temperature=1.0, seed=7) for q in PROMPTS]
    alone = [engine.generate([r])[0].text for r in sampled]
    assert _texts(engine, sampled) == alone
    # Beside greedy rows and rows of other seeds and settings, in another order.
    others = [_req(q, temperature=0.7, top_p=0.9, seed=99) for q in PROMPTS]
    batch = [others[0], sampled[2], _req(PROMPTS[1]), sampled[0], others[3], sampled[3]]
    got = _texts(engine, batch)
    assert [got[1], got[3], got[5]] == [alone[2], alone[0], alone[3]]
    assert _texts(engine, [_req(PROMPTS[0], temperature=1.0, seed=7)]) == [alone[0]]


def test_different_seeds_give_different_answers(engine: Engine) -> None:
    one = _texts(engine, [_req(q, temperature=1.0, seed=1) for q in PROMPTS])
    two = _texts(engine, [_req(q, temperature=1.0, seed=2) for q in PROMPTS])
    greedy = _texts(engine, [_req(q) for q in PROMPTS])
    assert sum(a != b for a, b in zip(one, two, strict=True)) >= len(PROMPTS) - 1
    assert sum(a != g for a, g in zip(one, greedy, strict=True)) >= len(PROMPTS) - 1
    # Unseeded: os.urandom seeds each row, so two calls part too.
    free = [_texts(engine, [_req(q, temperature=1.0) for q in PROMPTS]) for _ in range(2)]
    assert sum(a != b for a, b in zip(*free, strict=True)) >= len(PROMPTS) - 1


def test_a_tiny_top_p_is_the_greedy_answer(engine: Engine) -> None:
    greedy = _texts(engine, [_req(q) for q in PROMPTS])
    nucleus = _texts(engine, [_req(q, temperature=1.0, top_p=1e-6) for q in PROMPTS])
    assert nucleus == greedy


def test_unseeded_samples_skip_the_cache_and_greedy_keeps_its_key(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = GenCache(tmp_path / "cache.db")
    monkeypatch.setattr(engine, "cache", cache)
    q = PROMPTS[0]
    free = _req(q, temperature=1.0)
    assert not engine.generate([free])[0].cached
    assert not engine.generate([free])[0].cached
    assert cache.stats()["entries"] == {}  # nothing written either
    # Greedy: stored under the key it always had, so existing caches still hit.
    greedy = _req(q)
    first = engine.generate([greedy])[0]
    key = GenCache.key(engine.model_key, "", engine.render(_msgs(q)), generation_params(greedy))
    assert cache.get_many([key]) == {0: first.to_cache()}
    assert engine.generate([greedy])[0].cached
    # Seeded: its own key (never the greedy answer), a hit for the same seed only.
    seeded = engine.generate([_req(q, temperature=1.0, seed=3)])[0]
    assert not seeded.cached and seeded.text != first.text
    again = engine.generate([_req(q, temperature=1.0, seed=3)])[0]
    assert again.cached and again.text == seeded.text
    assert not engine.generate([_req(q, temperature=1.0, seed=4)])[0].cached
    assert not engine.generate([_req(q, temperature=1.0, top_p=0.5, seed=3)])[0].cached


def test_sampled_constrained_answers_keep_the_grammar(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A flat distribution loves whitespace, which JSON allows 12 in a row: 3 keeps calls short.
    monkeypatch.setenv("LMFE_MAX_CONSECUTIVE_WHITESPACES", "3")
    tools = [
        {
            "type": "function",
            "function": {
                "name": "convert",
                "parameters": {
                    "type": "object",
                    "properties": {"unit": {"type": "string", "enum": ["celsius", "kelvin"]}},
                    "required": ["unit"],
                },
            },
        }
    ]
    c = grammar.tool_constraint(engine.tokenizer, tools, "required", max_calls=1)
    reqs = [
        GenRequest(_msgs(q), max_new_tokens=200, constraint=c, temperature=1.0, seed=i)
        for i, q in enumerate(PROMPTS)
    ]
    for r in engine.generate(reqs):
        assert r.finish_reason == "stop", r.text
        [call] = parse_reply(r.text).calls
        assert call.name == "convert" and call.arguments["unit"] in ("celsius", "kelvin")


def test_bad_sampling_settings_are_one_line_errors(engine: Engine) -> None:
    with pytest.raises(UserError, match="temperature"):
        engine.generate([_req(PROMPTS[0], temperature=-1.0)])
    with pytest.raises(UserError, match="top_p"):
        engine.generate([_req(PROMPTS[0], temperature=1.0, top_p=1.5)])


def test_the_server_passes_temperature_top_p_and_seed_to_the_engine(engine: Engine) -> None:
    app = create_app(engine, settings=ServeSettings(batch_window_ms=5))

    def ask(**extra) -> str:
        body = {"model": "base", "messages": _msgs(PROMPTS[1]), "max_tokens": NEW, **extra}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    def streamed(**extra) -> str:
        body = {"model": "base", "messages": _msgs(PROMPTS[1]), "max_tokens": NEW, **extra}
        body["stream"] = True
        text = ""
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    text += json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        return text

    greedy = engine.generate([_req(PROMPTS[1])])[0].text
    with running(app) as url:
        assert ask() == greedy  # omitted: greedy, not OpenAI's 1.0
        one, two = ask(temperature=1.0, seed=1), ask(temperature=1.0, seed=2)
        assert one != two and greedy not in (one, two)
        assert ask(temperature=1.0, seed=1) == one
        assert ask(temperature=1.0, seed=1, top_p=1e-6) == greedy
        assert streamed(temperature=1.0, seed=1) == one  # a stream samples the same way
        body = {"model": "base", "messages": _msgs("hi"), "seed": 2**64}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 422 and "seed" in r.text
