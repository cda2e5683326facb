"""Function calls: one prompt everywhere, calls trained on, tool results never labels.

A tools conversation (system prompt, tools, a user turn, an assistant call, the tool's result, the
assistant's final text) goes through the same path as any other: ``Example.with_system`` puts the
tools on the system turn, :func:`tunewise.runtime.chat.render` shows them the template's way
(``tools=`` for Qwen 2.5 and Llama 3.1, whose templates render them) or through the fallback
prompt (SmolLM2, whose template ignores them). Checked on the published templates of
tests/fixtures/chat_templates: the training prompt equals the inference prompt and the prompt
rung's prompt token for token, the call's tokens are labels, the tool result's are not.
"""

from __future__ import annotations

import json

import pytest

from test_chat_templates import FAMILIES, _label_runs, _tokenizer, family_dirs
from tunewise.baselines import prompt as prompt_mod
from tunewise.data.schema import Example, parse_jsonl
from tunewise.runtime import chat
from tunewise.runtime.tool_calls import (
    CALL_OPEN,
    ToolCall,
    attach_tools,
    canonical_message,
    parse_reply,
    tools_prompt,
)
from tunewise.train.collate import IGNORE_INDEX, encode

__all__ = ["family_dirs"]  # the fixture, imported for pytest to find

SYSTEM = "You are the voice assistant of a music app."
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
RESULT = "RESULT-TEXT 12 degrees and rain"
FINAL = "It is 12 degrees and raining in Paris."
LINE = {
    "tools": [WEATHER],
    "messages": [
        {"role": "user", "content": "Weather in Paris for 2 days?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "days": 2}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": RESULT},
        {"role": "assistant", "content": FINAL},
    ],
}
# SmolLM2 ignores tools= (fallback); Qwen 2.5 and Llama 3.1 render them
TOOL_FAMILIES = {"smollm2": False, "qwen2_5": True, "llama3_1": True}


def _loaded(tmp_path) -> Example:
    """The line as tunewise loads it (no system prompt yet)."""
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps(LINE) + "\n")
    examples, problems = parse_jsonl(path)
    assert problems == []
    return examples[0]


def _example(tmp_path) -> Example:
    return _loaded(tmp_path).with_system(SYSTEM)


def test_a_call_turn_is_carried_as_its_text_and_its_structure(tmp_path):
    ex = _example(tmp_path)
    call_turn = ex.messages[2]
    assert call_turn["content"] == ToolCall("get_weather", {"city": "Paris", "days": 2}).to_text()
    assert call_turn["tool_calls"][0]["function"]["name"] == "get_weather"
    assert ex.messages[0]["tools"] == [WEATHER]  # on the system turn, for render to show
    assert ex.target == FINAL


@pytest.mark.parametrize("name", TOOL_FAMILIES)
def test_the_template_decides_how_tools_are_shown(family_dirs, name):
    tok = _tokenizer(family_dirs, name)
    assert chat.renders_tools(tok) is TOOL_FAMILIES[name]
    msgs = attach_tools([{"role": "system", "content": SYSTEM}, LINE["messages"][0]], [WEATHER])
    text = chat.render(tok, msgs, generation_prompt=True)
    assert "get_weather" in text and SYSTEM in text
    assert (tools_prompt([WEATHER]) in text) is not TOOL_FAMILIES[name]


@pytest.mark.parametrize("name", TOOL_FAMILIES)
def test_the_call_is_trained_on_and_the_tool_result_is_not(family_dirs, name, tmp_path):
    tok = _tokenizer(family_dirs, name)
    enc = encode(tok, _example(tmp_path), train_on="all")
    runs = [tok.decode(r) for r in _label_runs(enc)]
    assert len(runs) == 2
    assert "get_weather" in runs[0] and "Paris" in runs[0]  # the call's tokens are labels
    assert FINAL in runs[1]
    assert not any("RESULT-TEXT" in r for r in runs)  # the tool's result is context only
    assert "RESULT-TEXT" in tok.decode(enc.input_ids)
    eot = FAMILIES[name].eot
    assert all(r.rstrip().endswith(eot) for r in runs)


@pytest.mark.parametrize("name", TOOL_FAMILIES)
def test_training_rung_and_inference_prompts_are_equal_token_for_token(family_dirs, name, tmp_path):
    tok = _tokenizer(family_dirs, name)
    ex = _example(tmp_path)
    enc = encode(tok, ex, train_on="last")
    first_label = next(i for i, t in enumerate(enc.labels) if t != IGNORE_INDEX)
    inference = chat.encode(tok, [chat.render(tok, ex.prompt_messages, generation_prompt=True)])
    assert enc.input_ids[:first_label] == inference[0]
    rung = prompt_mod.base_messages(_loaded(tmp_path), SYSTEM)
    rung_ids = chat.encode(tok, [chat.render(tok, rung, generation_prompt=True)])[0]
    assert rung_ids == inference[0]
    if not TOOL_FAMILIES[name]:  # the fallback is in the text, not in the template
        plain = [{"role": m["role"], "content": m["content"]} for m in ex.prompt_messages]
        assert tools_prompt([WEATHER]) not in tok.apply_chat_template(plain, tokenize=False)
        assert tools_prompt([WEATHER]) in tok.decode(inference[0])


def test_parse_reply_reads_blocks_bare_objects_and_names_broken_blocks():
    text = (
        'Sure.\n<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n'
        '<tool_call>{"name": "b", "parameters": "{\\"y\\": \\"2\\"}"}</tool_call>'
    )
    reply = parse_reply(text)
    assert reply.content == "Sure."
    assert reply.calls == [ToolCall("a", {"x": 1}), ToolCall("b", {"y": "2"})]
    assert parse_reply('{"name": "a", "arguments": {}}').calls == [ToolCall("a", {})]
    cut = parse_reply(f'{CALL_OPEN}{{"name": "a", "arguments": {{"x": 1}}}}')  # unclosed
    assert cut.calls == [ToolCall("a", {"x": 1})]
    broken = parse_reply(f"{CALL_OPEN}not json</tool_call>")
    assert broken.calls == [] and broken.problems and "not JSON" in broken.problems[0]
    assert parse_reply("just text").calls == []
    assert ToolCall("a", {"x": 1, "y": 2}).key() == ToolCall("a", {"y": 2, "x": 1}).key()
    assert ToolCall("a", {"x": "3"}).key() != ToolCall("a", {"x": 3}).key()


def test_canonical_message_refuses_arguments_that_are_not_json():
    bad = {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "a"}}]}
    assert canonical_message(bad)["content"] == ToolCall("a", {}).to_text()
    bad["tool_calls"][0]["function"]["arguments"] = "{x"
    with pytest.raises(ValueError, match="not JSON"):
        canonical_message(bad)


def test_parse_reply_survives_hostile_json():
    # nesting past Python's stack and a 5000-digit integer are "not a call", never a traceback
    assert "not JSON" in parse_reply(f"{CALL_OPEN}{'[' * 100_000}</tool_call>").problems[0]
    huge = '{"name": "a", "arguments": {"x": ' + "9" * 5000 + "}}"
    assert parse_reply(huge).calls == []
    assert parse_reply(f"{CALL_OPEN}{huge}</tool_call>").problems


def test_a_call_turn_survives_a_round_trip_through_a_file(tmp_path):
    # Split files, traffic drafts and releases write examples back with Example.to_json and
    # read them again: the call must stay one call (it was doubled once: every SNIPS target of
    # the split files held its call twice, so training and grading both saw two calls).
    ex = _loaded(tmp_path)
    again = tmp_path / "again.jsonl"
    again.write_text(json.dumps(ex.to_json()) + "\n")
    (back,), problems = parse_jsonl(again)
    assert problems == []
    assert back.messages == ex.messages
    assert len(parse_reply(back.messages[1]["content"]).calls) == 1
    texted = {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": LINE["messages"][1]["tool_calls"],
    }
    once = canonical_message(texted)
    assert canonical_message(once) == once
    assert once["content"].startswith("Let me look.\n") and once["content"].count(CALL_OPEN) == 1
