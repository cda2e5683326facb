"""The shadow challenger of `tunewise serve --shadow NAME@ALIAS`: logged beside production, never
in the way of a response, bounded queue, scrubbed, bounded shutdown."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import types
import uuid
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from _serve_helpers import running
from _ship_helpers import assert_one_line, make_run, write_verdict
from tunewise.errors import UserError
from tunewise.registry.store import Registry
from tunewise.runtime.backend import GenResult
from tunewise.serve import schemas
from tunewise.serve import shadow as shadow_mod
from tunewise.serve.app import ServeSettings, create_app
from tunewise.serve.shadow import Shadow, ShadowSettings
from tunewise.serve.traffic import read_traffic, traffic_files

EMAIL, PHONE, CARD = "jane.doe@example.com", "(555) 123-4567", "4111 1111 1111 1111"
WAIT = 30  # seconds an Event may take before the test fails instead of hanging
SYSTEM = "You are the challenger."
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture(scope="module")
def tokens(tiny_model_dir) -> tuple[int, int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    yes = tok.encode(" yes", add_special_tokens=False)[0]
    return yes, tok.encode(" no", add_special_tokens=False)[0]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from tunewise.runtime.engine import Engine
    from tunewise.runtime.models import resolve

    return Engine(resolve(str(tiny_model_dir)), max_loaded_adapters=4, batch_size=4)


@pytest.fixture(scope="module")
def registry(tiny_model_dir, tokens, tmp_path_factory) -> Registry:
    """bot:1 answers ' yes' (production), bot:2 answers ' no' (staging: the challenger) and was
    trained with a system prompt and project tools of its own."""
    tmp = tmp_path_factory.mktemp("shadow-reg")
    reg = Registry(tmp / "registry")
    yes, no = tokens
    reg.add(make_run(tiny_model_dir, tmp / "r1", favour_token=yes), name="bot")
    run2 = make_run(tiny_model_dir, tmp / "r2", favour_token=no)
    meta = json.loads((run2 / "run.json").read_text())
    meta["config"]["task"] = {"system_prompt": SYSTEM, "tools": TOOLS}
    (run2 / "run.json").write_text(json.dumps(meta))
    reg.add(run2, name="bot")
    reg.promote("bot", 1, force=True, reason="test")
    reg.promote("bot", 2, alias="staging", force=True, reason="test")
    ship = write_verdict(tmp / "verdict.json", True)
    reg.add(make_run(tiny_model_dir, tmp / "other", seed=5), name="other", verdict=ship)
    return reg


def make_app(engine, registry, folder: Path | None, shadow: ShadowSettings | None, **kw):
    settings = ServeSettings(batch_window_ms=5, log_traffic=folder, shadow=shadow, **kw)
    return create_app(engine, settings=settings, registry=registry)


def body(model: str, content: str = "hello", **extra) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 3,
        **extra,
    }


def post(url: str, payload: dict) -> httpx.Response:
    r = httpx.post(f"{url}/v1/chat/completions", json=payload, timeout=60)
    assert r.status_code == 200, r.text
    return r


def stream(url: str, payload: dict) -> bytes:
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json={**payload, "stream": True}, timeout=60
    ) as r:
        assert r.status_code == 200
        return r.read()


def shadow_of(app) -> Shadow:
    return app.state.server.shadow


class Gate:
    """Replaces Shadow.generate: says when the challenger starts, waits until released (or
    answers ``text`` at once), then keeps what it was asked."""

    def __init__(self, monkeypatch, *, text: str | None = None, blocked: bool = True) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        if not blocked:
            self.release.set()
        self.asked: list = []
        self.text = text
        real = Shadow.generate

        def generate(shadow: Shadow, gen):
            self.asked.append(gen)
            self.entered.set()
            self.release.wait(WAIT)
            if self.text is not None:
                return GenResult(
                    self.text, prompt_tokens=5, completion_tokens=7, finish_reason="stop"
                )
            return real(shadow, gen)

        monkeypatch.setattr(Shadow, "generate", generate)


# --------------------------------------------------------------------------- logged beside


def test_shadow_answers_are_logged_beside_production(engine, registry, tmp_path):
    folder = tmp_path / "traffic"
    app = make_app(engine, registry, folder, ShadowSettings("bot@staging"))
    with running(app) as url:
        plain = post(url, body("bot@production", "first")).json()
        stream(url, body("bot", "second"))
        post(url, body("base", "third"))  # not a request for `bot`: not shadowed
        post(url, body("bot@staging", "fourth"))  # answered by the challenger itself: skipped
    production = read_traffic(folder)
    shadows = read_traffic(folder, prefix="shadow")
    assert [r["messages"][0]["content"] for r in production] == [
        "first",
        "second",
        "third",
        "fourth",
    ]
    assert [s["shadow_of"] for s in shadows] == [production[0]["id"], production[1]["id"]]
    assert production[0]["id"] == plain["id"]
    first = shadows[0]
    assert first["model"] == "bot@staging"
    assert first["resolved"] == {"key": "bot:2", "alias": "staging"}
    assert production[0]["resolved"] == {"key": "bot:1", "alias": "production"}
    assert production[0]["answer"] == " yes yes yes" and first["answer"] == " no no no"
    assert first["completion_tokens"] == 3 and first["prompt_tokens"] > 0
    assert first["finish_reason"] == "length" and first["status"] == 200
    assert first["latency_ms"] > 0 and first["queued_ms"] >= 0
    assert "messages" not in first  # the request is in production's record, once
    counts = shadow_of(app)
    assert (counts.answered, counts.skipped, counts.dropped) == (2, 1, 0)
    assert traffic_files(folder) and traffic_files(folder, "shadow")
    for path in traffic_files(folder, "shadow"):  # closed at shutdown: whole lines
        assert path.read_bytes().endswith(b"\n")


def test_the_challenger_gets_its_own_system_prompt_and_tools(
    engine, registry, tmp_path, monkeypatch
):
    gate = Gate(
        monkeypatch,
        blocked=False,
        text='<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
    )
    folder = tmp_path / "traffic"
    app = make_app(engine, registry, folder, ShadowSettings("bot@staging"))
    with running(app) as url:
        post(url, body("bot", "weather in Paris?"))  # no tools: bot:2's project tools apply
    (gen,) = gate.asked
    assert gen.adapter == "bot:2"
    assert gen.messages[0]["role"] == "system" and gen.messages[0]["content"] == SYSTEM
    assert gen.messages[0]["tools"][0]["function"]["name"] == "get_weather"
    assert gen.messages[1:] == [{"role": "user", "content": "weather in Paris?"}]
    (record,) = read_traffic(folder, prefix="shadow")
    (call,) = record["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert "tool_calls" not in read_traffic(folder)[0]  # production had no tools to call


# --------------------------------------------------------------------------- never in the way


def _fixed_ids(monkeypatch) -> None:
    """Response ids and timestamps fixed, so two servers' answers compare byte for byte."""
    fixed = types.SimpleNamespace(uuid4=lambda: uuid.UUID(int=7))
    monkeypatch.setattr("tunewise.serve.app.uuid", fixed)
    monkeypatch.setattr(schemas, "time", types.SimpleNamespace(time=lambda: 1_700_000_000))


def _answers(url: str) -> list[bytes]:
    return [
        post(url, body("bot@production", "same question")).content,
        stream(url, body("bot@production", "same question")),
        post(url, body("bot", "another one", max_tokens=5)).content,
    ]


def test_production_bytes_are_identical_with_and_without_a_shadow(
    engine, registry, tmp_path, monkeypatch
):
    _fixed_ids(monkeypatch)
    with running(make_app(engine, registry, tmp_path / "a", None)) as url:
        without = _answers(url)
    app = make_app(engine, registry, tmp_path / "b", ShadowSettings("bot@staging"))
    with running(app) as url:
        with_shadow = _answers(url)
    assert with_shadow == without
    assert b"yes" in without[0]
    assert shadow_of(app).answered == 3  # the shadow did answer all three


def test_a_blocked_shadow_never_delays_production(engine, registry, tmp_path, monkeypatch):
    gate = Gate(monkeypatch)
    folder = tmp_path / "traffic"
    app = make_app(engine, registry, folder, ShadowSettings("bot@staging"))
    with running(app) as url:
        post(url, body("bot", "one"))
        assert gate.entered.wait(WAIT), "the shadow never started"
        # The challenger is stuck on request one: production still answers, plain and streamed.
        second = post(url, body("bot", "two")).json()
        third = stream(url, body("bot", "three"))
        assert not gate.release.is_set() and shadow_of(app).answered == 0
        assert second["choices"][0]["message"]["content"] == " yes yes yes"
        assert b"[DONE]" in third
        gate.release.set()
    assert len(read_traffic(folder, prefix="shadow")) == 3  # all answered after the release


def test_the_challenger_steps_only_while_production_is_idle(
    engine, registry, tmp_path, monkeypatch
):
    folder = tmp_path / "traffic"
    app = make_app(engine, registry, folder, ShadowSettings("bot@staging"))
    shadow = shadow_of(app)
    waiting, steps = threading.Event(), []
    real_wait, real_steps = shadow.load.wait_idle, shadow.engine.steps

    def wait_idle(stop):
        if shadow.load.busy:
            waiting.set()
        real_wait(stop)

    def counted_steps(gen, **kw):
        inner = real_steps(gen, **kw)
        while True:
            try:
                next(inner)
            except StopIteration as stop:
                return stop.value
            steps.append(None)
            yield

    monkeypatch.setattr(shadow.load, "wait_idle", wait_idle)
    monkeypatch.setattr(shadow, "engine", types.SimpleNamespace(steps=counted_steps))
    monkeypatch.setattr(shadow_mod, "build_gen_request", _plain_request)
    with running(app) as url:
        shadow.load.enter()  # as if a production generation were running
        post(url, body("bot", "one"))
        assert waiting.wait(WAIT), "the challenger did not wait for production"
        assert steps == [] and shadow.answered == 0
        shadow.load.exit()  # production idle: the challenger answers
    assert steps and shadow.answered == 1


def test_a_production_request_counts_until_its_last_byte(engine, registry, tmp_path):
    app = make_app(engine, registry, tmp_path / "traffic", ShadowSettings("bot@staging"))
    load = shadow_of(app).load
    with running(app) as url:
        payload = {**body("bot", "count me", max_tokens=8), "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=payload, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: {")  # the role chunk: the answer has begun
            assert load.busy  # the challenger may not step now
            assert any(line == "data: [DONE]" for line in lines)
        post(url, body("base", "not a bot request: counted as well"))
        deadline = time.monotonic() + WAIT  # the server finishes its side just after the client
        load.wait_idle(lambda: time.monotonic() > deadline)
        assert not load.busy


def _plain_request(table, engine, req, key, release, messages, plan, **_):
    from tunewise.runtime.backend import GenRequest

    return GenRequest(messages=messages, adapter=key, max_new_tokens=2)


# --------------------------------------------------------------------------- bounded


def test_a_full_queue_drops_and_counts(engine, registry, tmp_path, monkeypatch, caplog):
    gate = Gate(monkeypatch)
    folder = tmp_path / "traffic"
    app = make_app(engine, registry, folder, ShadowSettings("bot@staging", queue_size=1))
    caplog.set_level(logging.INFO, logger="tunewise.serve.shadow")
    with running(app) as url:
        post(url, body("bot", "one"))
        assert gate.entered.wait(WAIT)  # one is being answered: the queue is empty
        for content in ("two", "three", "four"):  # two waits, three and four find it full
            post(url, body("bot", content))
        assert shadow_of(app).dropped_full == 2
        gate.release.set()
    shadows = read_traffic(folder, prefix="shadow")
    ids = {r["id"]: r["messages"][0]["content"] for r in read_traffic(folder)}
    assert [ids[s["shadow_of"]] for s in shadows] == ["one", "two"]
    assert "2 answered" in caplog.text and "2 dropped (2 queue full, 0 at shutdown)" in caplog.text


def test_shutdown_drops_what_it_cannot_answer_in_time(engine, registry, tmp_path, monkeypatch):
    gate = Gate(monkeypatch)
    folder = tmp_path / "traffic"
    app = make_app(engine, registry, folder, ShadowSettings("bot@staging", drain_s=0))
    with running(app) as url:
        post(url, body("bot", "one"))
        assert gate.entered.wait(WAIT)
        post(url, body("bot", "two"))
    # Shut down with the challenger still stuck: the queued job and the one in flight dropped.
    shadow = shadow_of(app)
    assert (shadow.dropped_shutdown, shadow.answered) == (2, 0)
    gate.release.set()  # the stuck answer arrives after the log closed: never written
    shadow._thread.join(WAIT)
    assert not shadow._thread.is_alive()
    assert read_traffic(folder, prefix="shadow") == []
    assert len(read_traffic(folder)) == 2  # production's records are all there


def test_pii_in_the_shadow_answer_is_scrubbed(engine, registry, tmp_path, monkeypatch):
    Gate(monkeypatch, blocked=False, text=f"write to {EMAIL} or call {PHONE}, card {CARD}")
    folder = tmp_path / "traffic"
    app = make_app(engine, registry, folder, ShadowSettings("bot@staging"))
    with running(app) as url:
        post(url, body("bot", f"I am {EMAIL}"))
    data = b"".join(p.read_bytes() for p in sorted(folder.iterdir()))
    for secret in (EMAIL, PHONE, CARD, "jane.doe", "123-4567", "4111111111111111"):
        assert secret.encode() not in data
    (record,) = read_traffic(folder, prefix="shadow")
    assert record["answer"] == "write to [email] or call [phone], card [card]"


def test_shadow_rate_samples_with_the_traffic_seed(engine, registry, tmp_path):
    folder = tmp_path / "traffic"
    shadow = ShadowSettings("bot@staging", rate=0.5)
    app = make_app(engine, registry, folder, shadow, traffic_seed=7)
    with running(app) as url:
        for i in range(10):
            post(url, body("bot", f"msg {i}", max_tokens=1))
    rng = random.Random(7)
    expected = [f"msg {i}" for i in range(10) if rng.random() < 0.5]
    assert 0 < len(expected) < 10
    contents = {r["id"]: r["messages"][0]["content"] for r in read_traffic(folder)}
    got = [contents[s["shadow_of"]] for s in read_traffic(folder, prefix="shadow")]
    assert got == expected


# --------------------------------------------------------------------------- refused at start


def test_a_shadow_needs_the_traffic_log_and_a_rate_in_range():
    from tunewise.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--shadow", "bot@staging"])
    assert_one_line(result, "--shadow bot@staging", "--log-traffic")
    result = runner.invoke(
        app, ["serve", "--shadow", "bot@staging", "--log-traffic", "x", "--shadow-rate", "0"]
    )
    assert_one_line(result, "--shadow-rate")


def test_a_shadow_that_resolves_to_nothing_stops_the_start(engine, registry, tmp_path):
    with pytest.raises(UserError, match=r"--shadow nope@staging: model 'nope@staging' not found"):
        make_app(engine, registry, tmp_path / "t", ShadowSettings("nope@staging"))
    with pytest.raises(UserError, match="--shadow bot@staging: needs --log-traffic"):
        make_app(engine, registry, None, ShadowSettings("bot@staging"))


def test_the_server_shows_what_tunewise_logs_at_info():
    # `tunewise serve` hands uvicorn a logging setup; the shadow's counts at shutdown are logged at
    # INFO by tunewise's own loggers, which uvicorn's default setup never showed.
    import subprocess
    import sys

    code = (
        "import logging, logging.config\n"
        "from tunewise.serve.app import log_config\n"
        "logging.config.dictConfig(log_config('info'))\n"
        "logging.getLogger('tunewise.serve.shadow').info('shadow counts here')\n"
        "logging.getLogger('tunewise.serve.shadow').debug('not at info')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "shadow counts here" in out.stderr and "not at info" not in out.stderr
