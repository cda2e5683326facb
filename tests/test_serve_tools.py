"""Function calls through the server, with the official ``openai`` client against a real uvicorn.

The tiny model never writes a call by itself, so generation is scripted (:class:`ScriptedEngine`:
the real Engine renders and counts every prompt, a script chooses the answer text); everything
else is the server as deployed: the registry, the model table, the prompt builder, the batcher,
the reader of calls, the SSE stream.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
from pathlib import Path

import httpx
import openai
import pytest

from _serve_helpers import running
from _ship_helpers import make_run, write_verdict
from tunewise.baselines import prompt as prompt_mod
from tunewise.data.schema import Example
from tunewise.export.modelfile import (
    _PROBE_TOOLS,
    TOOL_PROBES,
    build_modelfile,
    check_tool_pieces,
    go_template,
    measure,
)
from tunewise.export.vllm import (
    TOOL_TEMPLATE,
    check_tool_template,
    export_vllm,
    fallback_tool_template,
    plan_vllm,
    tool_serving,
)
from tunewise.fsio import atomic_write_json
from tunewise.registry.store import Registry
from tunewise.runtime import chat, models
from tunewise.runtime.backend import GenResult
from tunewise.runtime.tool_calls import (
    ToolCall,
    attach_tools,
    canonical_message,
    parse_reply,
    tools_prompt,
)
from tunewise.serve.app import ServeSettings, create_app
from tunewise.serve.tools import ReplyReader, read_answer
from tunewise.serve.traffic import read_traffic
from tunewise.train.collate import IGNORE_INDEX, encode

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"
SYSTEM = "You route requests to the right function."


def _tool(name: str, props: dict, required: list[str], strict: bool = False) -> dict:
    fn = {
        "name": name,
        "description": f"{name.replace('_', ' ')}",
        "parameters": {"type": "object", "properties": props, "required": required},
    }
    if strict:
        fn["parameters"]["additionalProperties"] = False
        fn["strict"] = True
    return {"type": "function", "function": fn}


def tools(strict: bool = False) -> list[dict]:
    return [
        _tool("get_weather", {"city": {"type": "string"}}, ["city"], strict),
        _tool("get_time", {"zone": {"type": "string"}}, ["zone"], strict),
    ]


TOOLS = tools()
PARIS = ToolCall("get_weather", {"city": "Paris"})
ROME = ToolCall("get_weather", {"city": "Rome"})
SCRIPT = {
    "weather in Paris?": PARIS.to_text(),
    "two cities": f"Checking both.\n{PARIS.to_text()}\n{ROME.to_text()}",
    "time please": ToolCall("get_time", {"zone": "UTC"}).to_text(),
    "bare": '{"name": "get_weather", "arguments": {"city": "Oslo"}}',
    "hello": "Hello! How can I help?",
}
AFTER_TOOL = "It is 18 degrees in Paris."


def script(messages: list[dict]) -> str:
    if messages[-1]["role"] == "tool":
        return AFTER_TOOL
    return SCRIPT.get(messages[-1]["content"], "I do not know.")


class ScriptedEngine:
    """The real Engine renders and counts each prompt (kept in ``prompts``); ``script`` writes
    the answer. ``stream`` sends it in 3-character pieces, so tags arrive cut."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.prompts: list[str] = []

    def _answer(self, req) -> GenResult:
        prompt = self._engine.render(req.messages)
        self.prompts.append(prompt)
        text = script(req.messages)
        n = len(self._engine.encode([prompt])[0])
        return GenResult(text, n, max(1, len(text) // 4), "stop")

    def generate(self, requests, **_):
        return [self._answer(r) for r in requests]

    def stream(self, request):
        result = self._answer(request)
        for i in range(0, len(result.text), 3):
            yield result.text[i : i + 3]
        return result

    def __getattr__(self, name):
        return getattr(self._engine, name)


def _registered(tiny_model_dir, tmp, name: str, task: dict) -> Path:
    run = make_run(tiny_model_dir, tmp / name, name=name)
    raw = json.loads((run / "run.json").read_text())
    raw["config"]["task"] = task
    atomic_write_json(run / "run.json", raw)  # as the trainer writes it
    return run


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory):
    """'bot' was trained with SYSTEM and project tools TOOLS; 'plain' with neither."""
    from tunewise.runtime.engine import Engine
    from tunewise.runtime.models import resolve

    tmp = tmp_path_factory.mktemp("serve-tools")
    reg = Registry(tmp / "registry")
    ship = write_verdict(tmp / "verdict.json", True)
    task = {"type": "tools", "system_prompt": SYSTEM, "tools": TOOLS}
    reg.add(_registered(tiny_model_dir, tmp, "bot", task), name="bot", verdict=ship)
    reg.add(_registered(tiny_model_dir, tmp, "plain", {}), name="plain", verdict=ship)
    engine = ScriptedEngine(Engine(resolve(str(tiny_model_dir)), batch_size=4))
    settings = ServeSettings(batch_window_ms=5, max_tokens_default=64, log_traffic=tmp / "log")
    app = create_app(engine, settings=settings, registry=reg)
    with running(app) as url:
        yield {"url": url, "engine": engine, "registry": reg, "log": tmp / "log"}


@pytest.fixture(scope="module")
def client(world) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{world['url']}/v1", api_key="unused", max_retries=0)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def raw_post(world, body: dict) -> httpx.Response:
    return httpx.post(f"{world['url']}/v1/chat/completions", json=body, timeout=60)


# --------------------------------------------------------------------------- auto


def test_auto_answers_with_tool_calls(client):
    r = client.chat.completions.create(
        model="base", messages=user("weather in Paris?"), tools=TOOLS
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and choice.message.role == "assistant"
    (call,) = choice.message.tool_calls
    assert re.fullmatch(r"call_[0-9a-f]{24}", call.id) and call.type == "function"
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments, str)
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    two = client.chat.completions.create(model="base", messages=user("two cities"), tools=TOOLS)
    msg = two.choices[0].message
    assert msg.content == "Checking both."
    assert [json.loads(c.function.arguments)["city"] for c in msg.tool_calls] == ["Paris", "Rome"]
    assert len({c.id for c in msg.tool_calls}) == 2

    bare = client.chat.completions.create(model="base", messages=user("bare"), tools=TOOLS)
    assert json.loads(bare.choices[0].message.tool_calls[0].function.arguments) == {"city": "Oslo"}

    text = client.chat.completions.create(model="base", messages=user("hello"), tools=TOOLS)
    assert text.choices[0].message.content == SCRIPT["hello"]
    assert text.choices[0].message.tool_calls is None
    assert text.choices[0].finish_reason == "stop"


def test_tool_choice_none_shows_no_tools_and_reads_no_calls(client, world):
    engine = world["engine"]
    r = client.chat.completions.create(
        model="base", messages=user("weather in Paris?"), tools=TOOLS, tool_choice="none"
    )
    assert "<tools>" not in engine.prompts[-1]
    assert r.choices[0].message.content == PARIS.to_text()  # the model's text, as written
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason == "stop"
    # 'bot' was trained with tools: 'none' keeps them out of its prompt too
    client.chat.completions.create(model="bot", messages=user("hello"), tool_choice="none")
    assert "<tools>" not in engine.prompts[-1] and SYSTEM in engine.prompts[-1]


def test_a_model_trained_with_project_tools_gets_them_when_a_request_sends_none(client, world):
    engine = world["engine"]
    r = client.chat.completions.create(model="bot", messages=user("weather in Paris?"))
    assert r.choices[0].finish_reason == "tool_calls"
    assert tools_prompt(TOOLS) in engine.prompts[-1] and SYSTEM in engine.prompts[-1]
    # tools the request sends replace them
    mine = [_tool("book_table", {"size": {"type": "integer"}}, ["size"])]
    client.chat.completions.create(model="bot", messages=user("hello"), tools=mine)
    assert tools_prompt(mine) in engine.prompts[-1] and "get_weather" not in engine.prompts[-1]


def test_tools_keep_their_key_order_through_run_json_the_registry_and_a_rebuild(
    tiny_model_dir, tmp_path
):
    # The key order of the tools' JSON is part of the prompt. The registry once stored configs
    # with sorted keys, and a served SNIPS answer differed from the evaluated one at a near-tie.
    from tunewise.registry.records import rebuild

    as_written = json.dumps(TOOLS)
    assert json.dumps(json.loads(as_written), sort_keys=True) != as_written  # order matters here
    reg = Registry(tmp_path / "registry")
    task = {"type": "tools", "system_prompt": SYSTEM, "tools": TOOLS}
    reg.add(_registered(tiny_model_dir, tmp_path, "bot", task), name="bot")
    assert json.dumps(reg.lookup("bot:1").config["task"]["tools"]) == as_written
    rebuild(Registry(tmp_path / "registry"), force=True)
    assert json.dumps(Registry(tmp_path / "registry").lookup("bot:1").config["task"]["tools"]) == (
        as_written
    )


def test_a_request_without_tools_is_answered_as_before(world):
    """No tools, no defaults: the answer is the text, even one that looks like a call."""
    for model in ("base", "plain"):
        r = raw_post(world, {"model": model, "messages": user("weather in Paris?")})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": PARIS.to_text()}
        assert choice["finish_reason"] == "stop"
        assert "<tools>" not in world["engine"].prompts[-1]
    body = {"model": "base", "messages": user("weather in Paris?"), "stream": True}
    with httpx.stream("POST", f"{world['url']}/v1/chat/completions", json=body) as r:
        chunks = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks[1:-1]]
    assert all(set(d) == {"content"} for d in deltas)
    assert "".join(d["content"] for d in deltas) == PARIS.to_text()
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}


# --------------------------------------------------------------------------- required / named


def test_required_and_a_named_function_answer_with_the_call(client):
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        r = client.chat.completions.create(
            model="base", messages=user("weather in Paris?"), tools=TOOLS, tool_choice=choice
        )
        assert r.choices[0].finish_reason == "tool_calls"
        assert r.choices[0].message.tool_calls[0].function.name == "get_weather"


@pytest.mark.parametrize(
    "ask, choice, said",
    [
        ("hello", "required", "text 'Hello! How can I help?'"),
        ("time please", {"type": "function", "function": {"name": "get_weather"}}, "'get_time'"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_an_unmet_tool_choice_is_a_422_never_a_200(client, ask, choice, said, stream):
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.chat.completions.create(
            model="base", messages=user(ask), tools=TOOLS, tool_choice=choice, stream=stream
        )
    body = err.value.body
    assert body["code"] == "tool_choice_unmet" and body["param"] == "tool_choice"
    assert said in body["message"]


# --------------------------------------------------------------------------- streaming


def _accumulate(stream) -> tuple[str | None, list[dict], str | None]:
    """(content, calls, finish_reason) from chunks, as a client reassembles OpenAI deltas."""
    content, calls, finish = None, {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta, finish = chunk.choices[0].delta, chunk.choices[0].finish_reason or finish
        if delta.content:
            content = (content or "") + delta.content
        for tc in delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = tc.id or entry["id"]
            if tc.function is not None:
                entry["name"] += tc.function.name or ""
                entry["arguments"] += tc.function.arguments or ""
    return content, [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("ask", ["weather in Paris?", "two cities", "bare", "hello"])
@pytest.mark.parametrize("choice", ["auto", "required"])
def test_streamed_calls_reassemble_to_the_non_streamed_answer(client, ask, choice):
    if choice == "required" and ask == "hello":
        return  # a 422 (test_an_unmet_tool_choice_is_a_422_never_a_200)
    kw = {"model": "base", "messages": user(ask), "tools": TOOLS, "tool_choice": choice}
    whole = client.chat.completions.create(**kw).choices[0]
    content, calls, finish = _accumulate(client.chat.completions.create(stream=True, **kw))
    assert content == whole.message.content
    assert finish == whole.finish_reason
    want = [
        (c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls or []
    ]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == want
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", c["id"]) for c in calls)


def test_the_openai_stream_helper_reassembles_the_call(client):
    with client.chat.completions.stream(
        model="base", messages=user("two cities"), tools=tools(strict=True)
    ) as stream:
        final = stream.get_final_completion()
    msg = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert msg.content == "Checking both."
    assert [c.function.parsed_arguments for c in msg.tool_calls] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]


# --------------------------------------------------------------------------- multi-turn


def test_a_tool_result_sent_back_continues_the_conversation(client, world):
    messages: list = user("weather in Paris?")
    first = client.chat.completions.create(model="bot", messages=messages, tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]
    messages.append(first.choices[0].message)  # as OpenAI's docs do: the message object itself
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18 C"})
    second = client.chat.completions.create(model="bot", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == AFTER_TOOL
    assert second.choices[0].finish_reason == "stop"
    prompt = world["engine"].prompts[-1]
    assert PARIS.to_text() in prompt and "<tool_response>\n18 C\n</tool_response>" in prompt


# --------------------------------------------------------------------------- bad input


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
BAD = [
    ({"tools": {"type": "function"}}, "tools", "expected a list"),
    (
        {"tools": [{"type": "function", "function": {"description": "x"}}]},
        "tools[0].function.name",
        "got null",
    ),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type", "only 'function'"),
    (
        {"tools": [_tool("f", {"x": {"type": "strin"}}, [])]},
        "tools[0].function.parameters",
        "not a valid JSON Schema at properties.x.type",
    ),
    ({"tools": [_tool("f", {}, []), _tool("f", {}, [])]}, "tools[1].function.name", "twice"),
    (
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice.function.name",
        "not one of the tools (get_weather, get_time)",
    ),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "expected one of"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    (
        {
            "messages": [
                *user("weather in Paris?"),
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_9", "content": "18 C"},
            ]
        },
        "messages[2].tool_call_id",
        "'call_9' answers no call made before it (calls made: call_1)",
    ),
    (
        {"messages": [*user("x"), {"role": "tool", "content": "18 C"}]},
        "messages[1].tool_call_id",
        "missing",
    ),
    (
        {
            "messages": [
                *user("x"),
                {
                    "role": "assistant",
                    "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{bad"}}],
                },
            ]
        },
        "messages[1].tool_calls[0].function",
        "arguments are not JSON",
    ),
]


@pytest.mark.parametrize("extra, param, needle", BAD, ids=[b[1] + ":" + b[2][:12] for b in BAD])
def test_bad_tools_and_tool_turns_are_400s_naming_the_field(world, extra, param, needle):
    r = raw_post(world, {"model": "base", "messages": user("weather in Paris?"), **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and err["message"].startswith(f"{param}: ")
    assert needle in err["message"] and err["type"] == "invalid_request_error"


def test_the_openai_client_sees_a_bad_schema_as_a_bad_request(client):
    bad = [_tool("f", {"x": {"type": 5}}, [])]
    with pytest.raises(openai.BadRequestError, match=r"tools\[0\]\.function\.parameters"):
        client.chat.completions.create(model="base", messages=user("x"), tools=bad)


def test_an_empty_tool_calls_list_is_a_turn_without_calls(world):
    messages = [
        *user("hi"),
        {"role": "assistant", "content": "Hi!", "tool_calls": []},
        *user("hello"),
    ]
    r = raw_post(world, {"model": "base", "messages": messages, "tools": TOOLS})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == SCRIPT["hello"]
    assert "<|im_start|>assistant\nHi!<|im_end|>" in world["engine"].prompts[-1]


# --------------------------------------------------------------------------- one prompt


CONVERSATION = [
    *user("weather in Paris?"),
    {"role": "assistant", "content": None, "tool_calls": [PARIS.to_openai("call_1")]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    {"role": "assistant", "content": AFTER_TOOL},
]


def _prompt_ids(tok, ex: Example, system: str) -> dict[str, list[int]]:
    """The prompt of ``ex``'s last answer as training and the prompt rung build it."""
    enc = encode(tok, ex.with_system(system), train_on="last")
    first_label = next(i for i, lab in enumerate(enc.labels) if lab != IGNORE_INDEX)
    rung = prompt_mod.base_messages(ex, system)
    rendered = chat.render(tok, rung, generation_prompt=True)
    return {"training": enc.input_ids[:first_label], "prompt rung": chat.encode(tok, [rendered])[0]}


def test_server_training_and_rung_prompts_are_equal_token_for_token(client, world):
    engine = world["engine"]
    ex = Example([canonical_message(m) for m in CONVERSATION], meta={"tools": TOOLS})
    want = _prompt_ids(engine.tokenizer, ex, SYSTEM)
    assert want["training"] == want["prompt rung"]
    for sent in ({}, {"tools": TOOLS}):  # the project tools by default, or sent as they are
        client.chat.completions.create(model="bot", messages=CONVERSATION[:-1], **sent)
        served = engine.encode([engine.prompts[-1]])[0]
        assert served == want["training"], sent
    assert tools_prompt(TOOLS) in engine.prompts[-1]


def test_native_tool_templates_get_the_same_prompt_too(tiny_model_dir, tmp_path):
    """A template that renders tools itself (Qwen 2.5's): the server passes them as training
    does, and the three prompts are still one."""
    from tunewise.runtime.engine import Engine
    from tunewise.runtime.models import resolve

    model_dir = tmp_path / "qwen-shaped"
    shutil.copytree(tiny_model_dir, model_dir)
    template = (FIXTURES / "qwen2_5.jinja").read_text()
    (model_dir / "chat_template.jinja").write_text(template)
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (model_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    engine = ScriptedEngine(Engine(resolve(str(model_dir)), batch_size=2))
    assert chat.renders_tools(engine.tokenizer)
    ex = Example([canonical_message(m) for m in CONVERSATION], meta={"tools": TOOLS})
    want = _prompt_ids(engine.tokenizer, ex, SYSTEM)
    app = create_app(engine, settings=ServeSettings(batch_window_ms=1, max_tokens_default=32))
    with running(app) as url:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        system = [{"role": "system", "content": SYSTEM}]
        c.chat.completions.create(model="base", messages=system + CONVERSATION[:-1], tools=TOOLS)
    served = engine.encode([engine.prompts[-1]])[0]
    assert served == want["training"] == want["prompt rung"]
    assert "<tools>" in engine.prompts[-1] and tools_prompt(TOOLS) not in engine.prompts[-1]


# --------------------------------------------------------------------------- traffic, reader


def test_the_traffic_log_keeps_the_calls_of_each_answer(client, world):
    two = client.chat.completions.create(model="base", messages=user("two cities"), tools=TOOLS)
    chunks = client.chat.completions.create(
        model="base", messages=user("weather in Paris?"), tools=TOOLS, stream=True
    )
    streamed = {c.id for c in chunks}
    default = client.chat.completions.create(model="bot", messages=user("time please"))
    ids = {two.id, default.id, *streamed}
    deadline = time.time() + 10
    logged: dict[str, dict] = {}
    while len(logged) < 3 and time.time() < deadline:  # the writer thread is asynchronous
        logged = {r["id"]: r for r in read_traffic(world["log"]) if r["id"] in ids}
        time.sleep(0.05)
    record = logged[two.id]
    assert record["answer"] == SCRIPT["two cities"]  # the text as the model wrote it
    assert record["tool_calls"] == [c.model_dump() for c in two.choices[0].message.tool_calls]
    assert record["tools"] == TOOLS
    (stream_id,) = streamed
    args = logged[stream_id]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(args) == {"city": "Paris"}
    assert logged[default.id]["tool_calls"][0]["function"]["name"] == "get_time"
    assert "tools" not in logged[default.id]  # the project's own: in the version's record


TEXTS = [*SCRIPT.values(), "", "  x  ", "a < b <tool", "x <tool_c", "<tool_call>", AFTER_TOOL]
TEXTS += ["t <tool_call>{bad</tool_call> u", '<tool_call>{"name": "f", "arguments": {"a": 1}}']
TEXTS += ['{"not": "a call"}', f"{PARIS.to_text()}\n\n  then text {ROME.to_text()}  "]


@pytest.mark.parametrize("text", TEXTS)
def test_the_stream_reader_reads_what_parse_reply_reads_wherever_the_text_is_cut(text):
    whole = read_answer(GenResult(text, 0, 0, "stop"))
    ref = parse_reply(text)
    assert [c.key() for c in whole.calls] == [c.key() for c in ref.calls]
    if not ref.problems:  # a block that is not a call stays in the text (see serve/tools.py)
        assert (whole.content or "") == ref.content
    rng = random.Random(text)
    for _ in range(30):
        reader, events, i = ReplyReader(), [], 0
        while i < len(text):
            step = rng.randint(1, 6)
            events += reader.feed(text[i : i + step])
            i += step
        events += reader.finish()
        assert "".join(v for k, v in events if k == "text") == (whole.content or "")
        assert [v.key() for k, v in events if k == "call"] == [c.key() for c in whole.calls]


# --------------------------------------------------------------------------- exports


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _fallback_render(tok, conversation: list[dict], tools_: list[dict]) -> str:
    """What training renders for ``conversation`` with ``tools_`` (its generation prompt)."""
    ours = attach_tools([canonical_message(m) for m in conversation], tools_)
    shaped, native = chat.tool_shaped(tok, ours)
    return tok.apply_chat_template(shaped, tools=native, tokenize=False, add_generation_prompt=True)


def test_vllm_export_names_the_parser_and_shows_tools_as_trained(tiny_model_dir, tmp_path):
    reg = Registry()
    task = {"type": "tools", "system_prompt": SYSTEM, "tools": TOOLS}
    reg.add(_registered(tiny_model_dir, tmp_path, "bot", task), name="bot")
    reg.add(_registered(tiny_model_dir, tmp_path, "plain", {}), name="plain")
    plan = export_vllm(["bot"], tmp_path / "out")
    assert plan.tools is not None and (plan.tools.format, plan.tools.parser) == (
        "fallback",
        "hermes",
    )
    cmd = plan.command
    template = tmp_path / "out" / TOOL_TEMPLATE
    assert cmd[cmd.index("--chat-template") + 1] == str(
        (tmp_path / "out").resolve() / TOOL_TEMPLATE
    )
    # SmolLM2's vocabulary writes <tool_call> as 5 tokens: vLLM's hermes parser refuses that
    assert "--tool-call-parser" not in cmd and "--enable-auto-tool-choice" not in cmd
    assert any("--tool-call-parser hermes" in w and "single tokens" in w for w in plan.warnings)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["tool_calls"] == {
        "format": "fallback",
        "tool_call_parser": "hermes",
        "parser_usable": False,
        "chat_template": TOOL_TEMPLATE,
    }
    # the template vLLM gets renders a tools conversation as training does, token for token
    tok = models.load_tokenizer(models.ModelRef("t", tiny_model_dir, "", "local"))
    system = [{"role": "system", "content": SYSTEM}]
    wire = [*system, *CONVERSATION[:-1]]
    vllm_side = tok.apply_chat_template(
        wire,
        tools=TOOLS,
        chat_template=template.read_text(),
        tokenize=False,
        add_generation_prompt=True,
    )
    assert vllm_side == _fallback_render(tok, wire, TOOLS)
    plain = export_vllm(["plain"], tmp_path / "plain-vllm")
    assert plain.tools is None and "--chat-template" not in plain.command
    assert not (tmp_path / "plain-vllm" / TOOL_TEMPLATE).exists()


def test_vllm_export_adds_the_parser_flags_when_the_vocabulary_has_the_tags(
    tiny_model_dir, tmp_path
):
    from transformers import AutoTokenizer

    task = {"type": "tools", "tools": TOOLS}
    run = _registered(tiny_model_dir, tmp_path, "bot", task)
    tok = AutoTokenizer.from_pretrained(run)
    tok.add_tokens(["<tool_call>", "</tool_call>"])
    tok.save_pretrained(run)
    Registry().add(run, name="bot")
    plan, _ = plan_vllm(["bot"], layout=tmp_path / "l")
    cmd = plan.command
    assert cmd[cmd.index("--tool-call-parser") + 1] == "hermes"
    assert "--enable-auto-tool-choice" in cmd and "--chat-template" in cmd
    assert plan.tools is not None and plan.tools.usable and not plan.tools.notes


@pytest.mark.parametrize(
    "family, parser",
    [("qwen2_5", "hermes"), ("llama3_1", "llama3_json"), ("mistral_v0_3", "mistral")],
)
def test_a_template_that_renders_tools_gets_its_familys_parser(tokenizer, family, parser):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (FIXTURES / f"{family}.jinja").read_text()
    serving = tool_serving(tok)
    assert (serving.format, serving.parser) == ("native", parser)
    assert serving.chat_template is None  # vLLM renders with the model's own template
    # hermes and mistral need their tags in the vocabulary (this one is SmolLM2's)
    assert serving.usable == (parser == "llama3_json")


def test_a_template_check_catches_a_template_without_the_tools(tokenizer):
    assert check_tool_template(tokenizer, fallback_tool_template(tokenizer.chat_template))
    assert not check_tool_template(tokenizer, tokenizer.chat_template)


def test_the_modelfile_template_renders_tools_calls_and_results_as_trained(
    tiny_model_dir, tokenizer
):
    text, notes = build_modelfile(tiny_model_dir, "m.gguf", tools=True)
    assert "$.Tools" in text and "$m.ToolCalls" in text and 'eq $m.Role "tool"' in text
    assert any("Go's json" in n for n in notes)
    plain, plain_notes = build_modelfile(tiny_model_dir, "m.gguf")
    assert ".Tools" not in plain and not plain_notes  # a model without calls: as before
    pieces = measure(tokenizer)
    assert pieces is not None and check_tool_pieces(tokenizer, pieces)
    # the mirror of the Go template, JSON written the Python way, is training's prompt
    ollama = [
        *user("weather in Paris?"),
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "18 C"},
    ]
    got = pieces.render(ollama, TOOLS, dumps=lambda v: json.dumps(v, ensure_ascii=False))
    assert got == _fallback_render(tokenizer, CONVERSATION[:-1], TOOLS)


def test_the_modelfile_of_a_template_with_its_own_tool_format_says_so(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "qwen-shaped"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "chat_template.jinja").write_text((FIXTURES / "qwen2_5.jinja").read_text())
    text, notes = build_modelfile(model_dir, "m.gguf", tools=True)
    assert ".Tools" not in text
    assert any("own format" in n or "no TEMPLATE" in n for n in notes)


def _go_json(value) -> str:
    """Go's json.Marshal of a decoded JSON value: compact, map keys sorted, <>& escaped."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


GO_PROGRAM = """package main
import ("encoding/json"; "os"; "text/template")
type Function struct { Name string; Arguments map[string]any }
type ToolCall struct { Function Function }
type Message struct { Role string; Content string; ToolCalls []ToolCall }
type ToolFunction struct { Name string; Description string; Parameters map[string]any }
type Tool struct { Type string; Function ToolFunction }
func main() {
  var data struct { Messages []Message; Tools []Tool }
  json.Unmarshal([]byte(os.Args[2]), &data)
  toJSON := func(v any) string { b, _ := json.Marshal(v); return string(b) }
  funcs := template.FuncMap{"json": toJSON}
  t := template.Must(template.New("t").Funcs(funcs).Parse(os.Args[1]))
  if err := t.Execute(os.Stdout, data); err != nil { panic(err) }
}
"""


@pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed (optional check)")
def test_the_go_template_with_tools_renders_like_its_mirror(tokenizer, tmp_path):
    """Run the tools TEMPLATE through Go's text/template (with Ollama's `json` function) on
    tool conversations, with and without tools, and on a plain one."""
    import subprocess

    pieces = measure(tokenizer)
    assert pieces is not None
    template = go_template(pieces, tools=True)
    program = tmp_path / "render.go"
    program.write_text(GO_PROGRAM)
    cases = [(p, _PROBE_TOOLS) for p in TOOL_PROBES]
    cases += [(TOOL_PROBES[0], []), (user("hi"), []), (user("hi"), _PROBE_TOOLS)]
    for messages, tools_ in cases:
        data = {
            "Messages": [
                {
                    "Role": m["role"],
                    "Content": m.get("content") or "",
                    "ToolCalls": [
                        {
                            "Function": {
                                "Name": c["function"]["name"],
                                "Arguments": c["function"]["arguments"],
                            }
                        }
                        for c in m.get("tool_calls") or []
                    ],
                }
                for m in messages
            ],
            "Tools": [
                {"Type": "function", "Function": {k.title(): v for k, v in t["function"].items()}}
                for t in tools_
            ],
        }
        rendered = subprocess.run(
            ["go", "run", str(program), template, json.dumps(data)],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout
        assert rendered == pieces.render(messages, tools_ or None, dumps=_go_json)


def test_required_and_named_choices_decode_under_a_tool_grammar():
    # tool_choice required / a named function join the request as a decoding constraint built
    # from the shown tools (runtime.grammar); auto and none leave decoding free
    from tunewise.serve.tools import ToolPlan, tool_constraint

    tools = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "g", "parameters": {"type": "object"}}},
    ]
    assert tool_constraint(ToolPlan(tools=tools, choice="auto")) is None
    assert tool_constraint(ToolPlan(tools=tools, choice="none")) is None
    required = tool_constraint(ToolPlan(tools=tools, choice="required"))
    named = tool_constraint(ToolPlan(tools=tools, choice="function", function="g"))
    assert required is not None and named is not None
    assert (required.mode, required.names) == ("required", ("f", "g"))
    assert (named.mode, named.names) == ("named", ("g",))


def test_parallel_tool_calls_false_allows_one_call_at_most():
    # OpenAI's parallel_tool_calls: false: the grammar admits one call, in every mode that reads
    # calls (auto too: a plain reply stays free, a call once opened is the last); the default
    # (absent or true) keeps parallel calls, and auto stays free as before
    from tunewise.runtime.grammar import DEFAULT_MAX_CALLS
    from tunewise.serve.tools import plan_tools, tool_constraint

    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for choice, mode in (("required", "required"), ("auto", "auto")):
        one = tool_constraint(plan_tools(tools, choice, [], False))
        assert one is not None and (one.mode, one.max_calls) == (mode, 1)
    many = tool_constraint(plan_tools(tools, "required", [], None))
    assert many is not None and many.max_calls == DEFAULT_MAX_CALLS
    assert tool_constraint(plan_tools(tools, "auto", [], True)) is None
    assert tool_constraint(plan_tools(tools, "none", [], False)) is None
