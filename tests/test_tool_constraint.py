"""Constrained function calls (issue 25, point 4): the tools' call grammar in the decode loop.

A tiny random Llama with the real SmolLM2 tokenizer writes whatever its weights say; under a
``required`` or ``named`` constraint every answer must still read back (``parse_reply``) as calls
of the given tools whose arguments validate against the tool's JSON Schema (``jsonschema``), for
greedy decoding and for sampling. ``auto`` leaves a plain answer alone; a request without a
constraint decodes exactly as before, alone or beside a constrained one. The grammar itself is
also walked at random over the whole vocabulary, without a model.
"""

from __future__ import annotations

import gc
import json
import random
import weakref
from functools import partial
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
import yaml

from tunewise.errors import UserError
from tunewise.runtime import decoding, grammar, models
from tunewise.runtime.backend import generation_params
from tunewise.runtime.engine import Engine, GenRequest
from tunewise.runtime.tool_calls import CALL_OPEN, parse_reply


def fn(name: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "description": f"the {name} function"}
    if parameters is not None:
        body["parameters"] = parameters
    return {"type": "function", "function": body}


SCHEMAS: dict[str, dict[str, Any] | None] = {
    "search": {
        "type": "object",
        "properties": {"query": {"type": "string"}},
        "required": ["query"],
    },
    "set_timer": {
        "type": "object",
        "properties": {"minutes": {"type": "integer"}, "ratio": {"type": "number"}},
        "required": ["minutes"],
    },
    "convert": {
        "type": "object",
        "properties": {
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "precision": {"enum": [0, 1, 2]},
        },
        "required": ["unit", "precision"],
    },
    "book": {
        "type": "object",
        "properties": {
            "where": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 8},
                    "near": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
                    "seats": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
                },
                "required": ["city"],
            }
        },
        "required": ["where"],
    },
    "note": {
        "type": "object",
        "properties": {"text": {"type": "string"}, "tag": {"type": ["string", "null"]}},
    },
    "ping": None,  # no parameters: arguments {}
}
TOOLS = [fn(name, schema) for name, schema in SCHEMAS.items()]
QUESTIONS = ["find me a recipe", "set a timer for 5 minutes", "in fahrenheit please", "hi"]
CAP = 12  # free strings: a random model rarely closes its quote unaided
CALLS = 3  # and it likes to call again and again


def _schema(name: str) -> dict[str, Any]:
    return SCHEMAS[name] or {"type": "object", "properties": {}, "additionalProperties": False}


def assert_valid_calls(text: str, names: list[str], *, text_allowed: bool = False) -> None:
    """``text`` reads back as calls, each of a function in ``names``, its arguments valid under
    that function's schema and using only its declared parameters."""
    reply = parse_reply(text)
    assert reply.calls and not reply.problems, text
    assert text_allowed or not reply.content, text
    for call in reply.calls:
        assert call.name in names, text
        jsonschema.validate(call.arguments, _schema(call.name))
        declared = set(_schema(call.name).get("properties") or {})
        assert set(call.arguments) <= declared, text


def _msgs(q: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Call a function."}, {"role": "user", "content": q}]


@pytest.fixture(autouse=True)
def short_whitespace_runs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random weights love whitespace tokens, and the library allows 12 whitespace characters in
    a row between JSON tokens: calls of a few hundred tokens. Three keep the model tests short;
    the random walks keep the library's default."""
    if "walk" not in request.node.name:
        monkeypatch.setenv("LMFE_MAX_CONSECUTIVE_WHITESPACES", "3")


@pytest.fixture(scope="module")
def lively_dir(tiny_model_dir: Path, tmp_path_factory) -> Path:
    """The shared tiny Llama with larger random weights (std 0.2): each prompt gets its own varied
    continuation (at 0.02 it repeats one token), so the grammar sees many different paths."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("lively-tools")
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.2
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def engine(lively_dir: Path) -> Engine:
    return Engine(models.resolve(str(lively_dir)), batch_size=4)


def _requests(constraint: Any, n: int = len(QUESTIONS), max_new: int = 320) -> list[GenRequest]:
    return [
        GenRequest(_msgs(q), max_new_tokens=max_new, constraint=constraint) for q in QUESTIONS[:n]
    ]


# --- greedy, through Engine.generate ------------------------------------------------------------


def test_required_answers_are_valid_calls_of_the_tools(engine: Engine) -> None:
    c = grammar.tool_constraint(
        engine.tokenizer, TOOLS, "required", max_calls=CALLS, max_string_chars=CAP
    )
    results = engine.generate(_requests(c))
    assert all(r.finish_reason == "stop" for r in results)  # ended by the grammar, not the budget
    for r in results:
        assert_valid_calls(r.text, list(SCHEMAS))
    # a varied model, so this covered more than one path
    assert len({parse_reply(r.text).calls[0].name for r in results}) > 1


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_named_mode_calls_only_that_function(engine: Engine, name: str) -> None:
    c = grammar.tool_constraint(
        engine.tokenizer, TOOLS, "named", name, max_calls=CALLS, max_string_chars=CAP
    )
    results = engine.generate(_requests(c, n=2))
    for r in results:
        assert r.finish_reason == "stop"
        assert_valid_calls(r.text, [name])


def test_one_call_at_most_when_asked(engine: Engine) -> None:
    c = grammar.tool_constraint(
        engine.tokenizer, TOOLS, "required", max_calls=1, max_string_chars=CAP
    )
    for r in engine.generate(_requests(c)):
        assert r.finish_reason == "stop" and len(parse_reply(r.text).calls) == 1


# --- sampling: the same masked logits, another way of picking ---------------------------------


def _sampled(
    engine: Engine, requests: list[GenRequest], seed: int, forced: list[int] | None = None
) -> list[str]:
    """Answers sampled (temperature 1) through the engine's decode loop; ``forced`` tokens are
    written first whatever the logits say (a model that opens a call in auto mode)."""
    gen = torch.Generator().manual_seed(seed)
    steps = iter(forced or [])

    def pick(logits: torch.Tensor) -> torch.Tensor:
        nxt = next(steps, None)
        if nxt is not None:
            return torch.full((logits.shape[0],), nxt)
        probs = torch.softmax(logits.float(), dim=-1)
        return torch.multinomial(probs, 1, generator=gen)[:, 0]

    prompts = engine.encode([engine.render(r.messages) for r in requests])
    rows = [engine._row(r, p) for r, p in zip(requests, prompts, strict=True)]
    loop = decoding.greedy_decode(
        partial(engine._forward, None),
        engine._base.config,
        rows,
        eos_ids=engine.eos_ids,
        pad_id=engine.pad_id,
        decode=engine.decode,
        pick=pick,
    )
    for _ in loop:
        pass
    assert all(row.finish == "stop" for row in rows)
    return [engine._result(row).text for row in rows]


def test_sampled_answers_are_valid_calls_too(engine: Engine) -> None:
    c = grammar.tool_constraint(
        engine.tokenizer, TOOLS, "required", max_calls=2, max_string_chars=CAP
    )
    for text in _sampled(engine, _requests(c), seed=0):
        assert_valid_calls(text, list(SCHEMAS))


# --- auto: free until the model opens a call ----------------------------------------------------


def test_auto_leaves_a_plain_answer_alone(engine: Engine) -> None:
    free = engine.generate(_requests(None, max_new=24))
    assert not any(CALL_OPEN in r.text for r in free)  # the random model writes no call here
    auto = grammar.tool_constraint(engine.tokenizer, TOOLS, "auto", max_string_chars=CAP)
    held = engine.generate(_requests(auto, max_new=24))
    assert [r.text for r in held] == [r.text for r in free]


def test_auto_holds_the_rest_of_an_opened_call_to_the_grammar(engine: Engine) -> None:
    auto = grammar.tool_constraint(
        engine.tokenizer, TOOLS, "auto", max_calls=2, max_string_chars=CAP
    )
    opening = engine.encode(["Sure.\n" + CALL_OPEN])[0]  # written first, then sampled freely
    for text in _sampled(engine, _requests(auto, n=3), seed=0, forced=opening):
        assert text.startswith("Sure.\n" + CALL_OPEN)
        assert_valid_calls(text, list(SCHEMAS), text_allowed=True)


# --- requests without a constraint --------------------------------------------------------------


def test_unconstrained_batches_take_the_old_path_and_match_hf_generate(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_masking(*_: Any) -> None:
        raise AssertionError("a batch without constraints must not pay for masking")

    monkeypatch.setattr(decoding, "apply_constraints", no_masking)
    results = engine.generate(_requests(None, max_new=12))
    for q, r in zip(QUESTIONS, results, strict=True):
        ids = engine.encode([engine.render(_msgs(q))])[0]
        with torch.inference_mode():
            out = engine.model.generate(
                torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=engine.pad_id
            )
        assert r.text == engine.decode(out[0, len(ids) :].tolist())


def test_a_mixed_batch_leaves_the_free_row_as_it_is_alone(engine: Engine) -> None:
    c = grammar.tool_constraint(
        engine.tokenizer, TOOLS, "required", max_calls=CALLS, max_string_chars=CAP
    )
    alone = engine.generate([GenRequest(_msgs(QUESTIONS[1]), max_new_tokens=40)])[0]
    mixed = engine.generate(
        [
            GenRequest(_msgs(QUESTIONS[0]), max_new_tokens=320, constraint=c),
            GenRequest(_msgs(QUESTIONS[1]), max_new_tokens=40),
        ]
    )
    assert mixed[1].text == alone.text and CALL_OPEN not in alone.text
    assert_valid_calls(mixed[0].text, list(SCHEMAS))


def test_the_cache_key_of_a_free_request_is_unchanged_and_a_constraint_has_its_own() -> None:
    plain = GenRequest(_msgs("x"), max_new_tokens=8)
    assert generation_params(plain) == {"decoding": "greedy", "max_new_tokens": 8, "stop": []}
    required = grammar.tool_constraint(None, TOOLS, "required")
    named = grammar.tool_constraint(None, TOOLS, "named", "ping")
    keys = {
        json.dumps(generation_params(GenRequest(_msgs("x"), max_new_tokens=8, constraint=c)))
        for c in (required, named, grammar.tool_constraint(None, TOOLS, "required"))
    }
    assert len(keys) == 2  # equal constraints share a key, different ones do not


# --- the grammar alone, over the real tokenizer -------------------------------------------------


def test_the_eot_token_only_where_the_calls_are_complete(engine: Engine) -> None:
    tok = engine.tokenizer
    c = grammar.tool_constraint(tok, TOOLS, "required", max_calls=2)
    row = c.start(tok, engine.eos_ids)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    text = (
        '<tool_call>{"name": "set_timer", "arguments": {"minutes": 5}}</tool_call>\n'
        '<tool_call>{"name": "ping", "arguments": {}}</tool_call>'
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for k in range(len(ids)):
        mask = row.allowed(ids[:k])
        assert mask[ids[k]], tok.decode(ids[: k + 1])
        closed = tok.decode(ids[:k]).endswith("</tool_call>")
        assert bool(mask[eot]) == closed, tok.decode(ids[:k])
    final = row.allowed(ids)  # max_calls reached: only the end of the turn
    assert set(final.nonzero().flatten().tolist()) == set(engine.eos_ids)


def test_the_tokenizer_data_is_built_once_and_let_go_with_its_tokenizer(
    tiny_model_dir: Path,
) -> None:
    from transformers import AutoTokenizer

    from tunewise.runtime import grammar_enforcer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    first = grammar_enforcer.tokenizer_data(tok)
    assert grammar_enforcer.tokenizer_data(tok) is first  # cached: it takes about a second
    gone = weakref.ref(tok)
    del tok, first
    gc.collect()
    assert gone() is None  # a weak cache: no tokenizer is kept alive by its grammar data


def _walk(row: Any, rng: random.Random, prefix: list[int], eot: int) -> list[int] | None:
    """Tokens drawn uniformly among the allowed ones until the end of the turn."""
    gen = list(prefix)
    for _ in range(500):
        allowed = row.allowed(gen).nonzero().flatten().tolist()
        tok = rng.choice(allowed)
        if tok == eot:
            return gen
        gen.append(tok)
    return None


@pytest.mark.parametrize("mode", ["required", "named", "auto"])
def test_random_walks_through_the_grammar_end_in_valid_calls(engine: Engine, mode: str) -> None:
    """Any path the grammar allows, not only the ones a model likes: uniform choices over the
    whole allowed vocabulary (byte pieces, tabs, odd unicode) still give valid calls."""
    tok, rng = engine.tokenizer, random.Random(0)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    prefix = tok("Sure.\n" + CALL_OPEN, add_special_tokens=False)["input_ids"]
    for name in SCHEMAS:
        c = grammar.tool_constraint(tok, TOOLS, mode, name, max_calls=2, max_string_chars=CAP)
        for _ in range(1):
            row = c.start(tok, [eot])
            if mode == "auto":
                assert all(row.allowed(prefix[:k]) is None for k in range(len(prefix)))
            gen = _walk(row, rng, prefix if mode == "auto" else [], eot)
            assert gen is not None
            names = [name] if mode == "named" else list(SCHEMAS)
            assert_valid_calls(tok.decode(gen), names, text_allowed=mode == "auto")


def test_schemas_the_grammar_cannot_use_are_one_line_errors() -> None:
    with pytest.raises(UserError, match=r"'nope'.*not in the tools"):
        grammar.tool_constraint(None, TOOLS, "named", "nope")
    with pytest.raises(UserError, match="tool_choice mode 'sometimes'"):
        grammar.tool_constraint(None, TOOLS, "sometimes")
    with pytest.raises(UserError, match="at least one tool"):
        grammar.tool_constraint(None, [], "required")
    with pytest.raises(UserError, match=r"tools\[0\]: expected a tool object"):
        grammar.tool_constraint(None, ["get_weather"], "required")  # type: ignore[list-item]
    bad_type = fn("f", {"type": "object", "properties": {"when": {"type": "date"}}})
    with pytest.raises(UserError, match=r"tool 'f': parameters.properties.when: type 'date'"):
        grammar.tool_constraint(None, [bad_type], "required")
    bool_enum = fn("f", {"type": "object", "properties": {"x": {"enum": [True, False]}}})
    with pytest.raises(UserError, match="enum of strings or of numbers"):
        grammar.tool_constraint(None, [bool_enum], "required")
    dangling = fn("f", {"type": "object", "properties": {"x": {"$ref": "#/$defs/Nope"}}})
    with pytest.raises(UserError, match="names no definition"):
        grammar.tool_constraint(None, [dangling], "required")
    a = fn("a", {"$defs": {"P": {"type": "string"}}, "properties": {"p": {"$ref": "#/$defs/P"}}})
    b = fn("b", {"$defs": {"P": {"type": "integer"}}, "properties": {"p": {"$ref": "#/$defs/P"}}})
    with pytest.raises(UserError, match="definition 'P' differs"):
        grammar.tool_constraint(None, [a, b], "required")


def test_the_callers_tools_are_not_changed_by_the_string_cap() -> None:
    before = json.dumps(TOOLS, sort_keys=True)
    grammar.tool_constraint(None, TOOLS, "required", max_string_chars=5)
    assert json.dumps(TOOLS, sort_keys=True) == before


# --- the ladder's X+constrained on a tools task ---------------------------------------------------


def _tools_project(root: Path, model: Path, *, plain_replies: bool) -> Path:
    tool = fn("get_weather", {"type": "object", "properties": {"city": {"type": "string"}}})
    cities = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Dakar", "Perth", "Bern"]
    rows = []
    for i, city in enumerate(cities * 2):
        user = {"role": "user", "content": f"weather in {city}?" + " please" * (i // 10)}
        if plain_replies and i % 2:
            answer: dict[str, Any] = {"role": "assistant", "content": "I cannot tell."}
        else:
            args = json.dumps({"city": city})
            call = {"id": f"c{i}", "type": "function"}
            call["function"] = {"name": "get_weather", "arguments": args}
            answer = {"role": "assistant", "content": None, "tool_calls": [call]}
        rows.append({"messages": [user, answer]})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "name": "weather",
        "model": {"base": str(model)},
        "data": {"train": "train.jsonl", "split": {"val": 0.25, "test": 0.25}},
        "task": {"type": "tools", "tools": [tool], "system_prompt": "Answer with a call."},
        "eval": {"candidates": ["prompt"], "max_new_tokens": 40},
        "gate": {"baselines": ["prompt"]},
    }
    (root / "project.yaml").write_text(yaml.safe_dump(cfg))
    return root / "project.yaml"


def test_plan_adds_constrained_candidates_on_a_tools_task(tmp_path: Path, lively_dir: Path) -> None:
    from tunewise.config import load_project
    from tunewise.eval.harness import plan_candidates

    cfg = load_project(_tools_project(tmp_path, lively_dir, plain_replies=False))
    assert plan_candidates(cfg, ["prompt", "fewshot"], {}) == [
        "prompt",
        "fewshot",
        "prompt+constrained",
        "fewshot+constrained",
    ]


@pytest.mark.parametrize("plain_replies", [False, True])
def test_prompt_constrained_on_a_tools_task_is_graded_like_prompt(
    tmp_path: Path, lively_dir: Path, plain_replies: bool
) -> None:
    from tunewise.config import load_project
    from tunewise.eval.harness import evaluate

    cfg = load_project(_tools_project(tmp_path, lively_dir, plain_replies=plain_replies))
    run = evaluate(cfg, progress=False, limit=4)
    free, held = run.candidate("prompt"), run.candidate("prompt+constrained")
    assert held.kind == "constrained" and held.meta["of"] == "prompt"
    assert held.meta["tool_choice"] == ("auto" if plain_replies else "required")
    assert held.meta["mode"] == "tool-grammar" and held.meta["max_string_chars"] == 64
    # every training answer makes one call: a constrained answer may make no more
    assert held.meta["max_calls"] == 1
    # the same graders on both, so validity and accuracy compare with and without the grammar
    assert set(held.items[0].scores) == set(free.items[0].scores)
    assert "call_schema_valid" in held.items[0].scores
    if plain_replies:  # auto: the random model writes no call, its answers stay as they were
        assert [i.output for i in held.items] == [i.output for i in free.items]
    else:  # required: every answer is a call of get_weather, valid where the budget allowed
        assert all(i.output.startswith(CALL_OPEN) for i in held.items)
        assert not any(i.output.startswith(CALL_OPEN) for i in free.items)


def test_max_calls_come_from_the_most_calls_a_training_answer_makes() -> None:
    from tunewise.data.schema import Example
    from tunewise.eval.constrained import max_calls_for
    from tunewise.runtime.tool_calls import canonical_message

    def ex(*names: str) -> Example:
        calls = [
            {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": "{}"}}
            for i, n in enumerate(names)
        ]
        answer: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": calls}
        if not names:
            answer = {"role": "assistant", "content": "no call"}
        return Example([{"role": "user", "content": "q"}, canonical_message(answer)])

    assert max_calls_for([ex("a"), ex("b")]) == 1  # SNIPS: one call per query
    assert max_calls_for([ex("a"), ex("a", "b"), ex()]) == 2
    assert max_calls_for([ex()]) == 1 and max_calls_for([]) == 1
