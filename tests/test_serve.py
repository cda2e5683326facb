"""The OpenAI-compatible server, against a real uvicorn on a free loopback port (shut down)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time

import httpx
import pytest

from _serve_helpers import running
from _ship_helpers import make_run, write_verdict
from tunewise.registry.store import Registry
from tunewise.serve.app import MicroBatcher, ServeSettings, create_app

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN = {"Authorization": "Bearer admin-key"}  # the client key never opens /admin


@pytest.fixture(scope="module")
def tokens(tiny_model_dir) -> tuple[int, int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return tok.encode(" yes", add_special_tokens=False)[0], tok.encode(
        " no", add_special_tokens=False
    )[0]


@pytest.fixture(scope="module")
def world(tiny_model_dir, tokens, tmp_path_factory):
    """A registry with bot:1 (answers ' yes'), bot:2 (' no'), two plain adapters, a foreign-base
    adapter and a corrupted one; an Engine on the tiny base with an LRU bound of 2."""
    from tunewise.runtime.engine import Engine
    from tunewise.runtime.models import resolve

    tmp = tmp_path_factory.mktemp("serve")
    reg = Registry(tmp / "registry")
    ship = write_verdict(tmp / "verdict.json", True)
    yes, no = tokens
    reg.add(make_run(tiny_model_dir, tmp / "r1", favour_token=yes), name="bot", verdict=ship)
    ship2 = write_verdict(tmp / "verdict2.json", True, champion="bot:1")
    reg.add(make_run(tiny_model_dir, tmp / "r2", favour_token=no), name="bot", verdict=ship2)
    reg.promote("bot", 1)
    reg.promote("bot", 2)
    for i, n in enumerate(("alpha", "beta", "gamma")):
        reg.add(make_run(tiny_model_dir, tmp / n, seed=10 + i), name=n)
    foreign = make_run(tiny_model_dir, tmp / "foreign", seed=3)
    meta = json.loads((foreign / "run.json").read_text())
    meta["base_model"]["weight_hash"] = "0" * 64
    (foreign / "run.json").write_text(json.dumps(meta))
    reg.add(foreign, name="foreign")
    broken = reg.add(make_run(tiny_model_dir, tmp / "broken", seed=4), name="broken")
    blob = reg.blob_path(broken.files["adapter_model.safetensors"])
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-8] + b"corrupt!")
    engine = Engine(resolve(str(tiny_model_dir)), max_loaded_adapters=2, batch_size=8)
    direct = make_run(tiny_model_dir, tmp / "direct", seed=7)
    settings = ServeSettings(
        api_key=KEY,
        admin_key="admin-key",
        batch_window_ms=30,
        max_tokens_limit=64,
        max_body_bytes=200_000,
        adapters=[f"direct={direct}"],
    )
    app = create_app(engine, settings=settings, registry=reg)
    with running(app) as url:
        yield {"url": url, "registry": reg, "engine": engine, "tokens": tokens}


def chat(url: str, model: str, content: str = "hello", **extra) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 3,
        **extra,
    }
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)


def answer(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["message"]["content"]


def test_models_endpoint_lists_base_adapters_and_aliases(world):
    r = httpx.get(f"{world['url']}/v1/models", headers=AUTH, timeout=30)
    assert r.status_code == 200
    ids = {m["id"] for m in r.json()["data"]}
    assert {"bot", "bot@production", "alpha", "direct", world["engine"].ref.name} <= ids
    assert all(m["object"] == "model" for m in r.json()["data"])


def test_model_forms_route_to_the_right_weights(world):
    url = world["url"]
    r = chat(url, "bot@production")
    assert answer(r).split() == ["no", "no", "no"]
    assert r.json()["system_fingerprint"] == "bot:2"
    assert answer(chat(url, "bot:1")).split() == ["yes", "yes", "yes"]
    assert answer(chat(url, "bot")).split() == ["no", "no", "no"]  # bare name -> production
    base = chat(url, "base")
    assert answer(base).split() != ["no", "no", "no"]
    body = base.json()
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["finish_reason"] == "length"
    assert answer(chat(url, "direct")) != answer(chat(url, "alpha"))  # different random adapters


def sse_lines(url: str, body: dict) -> tuple[httpx.Headers, list[str]]:
    """The response headers and non-empty lines of a streamed chat completion (status 200)."""
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=60
    ) as r:
        assert r.status_code == 200
        return r.headers, [ln for ln in r.iter_lines() if ln]


def test_streaming_sse_matches_non_streaming(world):
    url = world["url"]
    expected = answer(chat(url, "alpha", content="stream me"))
    body = {
        "model": "alpha",
        "messages": [{"role": "user", "content": "stream me"}],
        "max_tokens": 3,
        "stream": True,
    }
    headers, lines = sse_lines(url, body)
    assert headers["content-type"].startswith("text/event-stream")
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def _bad_requests(url: str) -> list[tuple[int, httpx.Response]]:
    post = f"{url}/v1/chat/completions"
    ok_msgs = [{"role": "user", "content": "hi"}]
    cases = [
        (404, httpx.post(post, json={"model": "nope", "messages": ok_msgs}, headers=AUTH)),
        (404, httpx.post(post, json={"model": "bot@staging", "messages": ok_msgs}, headers=AUTH)),
        (
            404,
            httpx.post(post, json={"model": "../../etc/passwd", "messages": ok_msgs}, headers=AUTH),
        ),
        (404, httpx.post(post, json={"model": "bot:99", "messages": ok_msgs}, headers=AUTH)),
        *[  # a version SQLite cannot hold, digits int() refuses (was a 500 each)
            (404, httpx.post(post, json={"model": model, "messages": ok_msgs}, headers=AUTH))
            for model in ("x:99999999999999999999999", "bot:²", "bot:1٣")
        ],
        (422, httpx.post(post, json={"model": "bot"}, headers=AUTH)),
        (422, httpx.post(post, json={"model": "bot", "messages": []}, headers=AUTH)),
        (
            422,
            httpx.post(
                post,
                json={"model": "bot", "messages": [{"role": "wizard", "content": "x"}]},
                headers=AUTH,
            ),
        ),
        (
            422,
            httpx.post(
                post, json={"model": "bot", "messages": ok_msgs, "max_tokens": 0}, headers=AUTH
            ),
        ),
        (
            422,
            httpx.post(
                post, json={"model": "bot", "messages": ok_msgs, "max_tokens": 10**6}, headers=AUTH
            ),
        ),
        (422, httpx.post(post, json={"model": "bot", "messages": ok_msgs, "n": 2}, headers=AUTH)),
        (
            422,
            httpx.post(
                post, json={"model": "bot", "messages": ok_msgs, "stop": ["a"] * 5}, headers=AUTH
            ),
        ),
        (422, httpx.post(post, json=[1, 2, 3], headers=AUTH)),
        (422, httpx.post(post, content=b"{not json", headers=AUTH)),
        (422, httpx.post(post, content=b"\xff\xfe\x00", headers=AUTH)),
        (422, httpx.post(post, content=b"[" * 100_000, headers=AUTH)),
        (
            422,
            httpx.post(
                post, content=b'{"model": "bot", "max_tokens": 1' + b"0" * 5000 + b"}", headers=AUTH
            ),
        ),
        (
            422,
            httpx.post(
                post,
                json={
                    "model": "bot",
                    "messages": [
                        {"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}
                    ],
                },
                headers=AUTH,
            ),
        ),
        (422, httpx.post(post, json={"model": 5, "messages": "hi"}, headers=AUTH)),
        (
            413,
            httpx.post(
                post,
                json={"model": "bot", "messages": [{"role": "user", "content": "word " * 3000}]},
                headers=AUTH,
            ),
        ),
        (413, httpx.post(post, content=b"x" * 300_000, headers=AUTH)),
        (401, httpx.post(post, json={"model": "bot", "messages": ok_msgs})),
        (
            401,
            httpx.post(
                post,
                json={"model": "bot", "messages": ok_msgs},
                headers={"Authorization": "Bearer wrong"},
            ),
        ),
        (401, httpx.get(f"{url}/v1/models", headers={"Authorization": f"Basic {KEY}"})),
        (401, httpx.post(f"{url}/admin/adapters/refresh")),
        (409, httpx.post(post, json={"model": "foreign", "messages": ok_msgs}, headers=AUTH)),
        (503, httpx.post(post, json={"model": "broken", "messages": ok_msgs}, headers=AUTH)),
        (404, httpx.get(f"{url}/v1/nothing-here", headers=AUTH)),
        (405, httpx.get(f"{url}/v1/chat/completions", headers=AUTH)),
    ]
    return cases


def test_every_error_code_in_openai_shape_and_server_survives(world):
    url = world["url"]
    for expected, resp in _bad_requests(url):
        assert resp.status_code == expected, (expected, resp.status_code, resp.text)
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
    r = httpx.post(
        f"{url}/v1/chat/completions",
        headers=AUTH,
        json={"model": "foreign", "messages": [{"role": "user", "content": "x"}]},
    )
    assert "trained on base 000000000000" in r.json()["error"]["message"]
    r = httpx.post(
        f"{url}/v1/chat/completions",
        headers=AUTH,
        json={"model": "broken", "messages": [{"role": "user", "content": "x"}]},
    )
    assert "corrupted" in r.json()["error"]["message"]
    assert "broken:1" not in world["engine"].adapters()  # never served
    assert httpx.get(f"{url}/health").status_code == 200  # still up
    assert answer(chat(url, "bot:1")).split() == ["yes", "yes", "yes"]


def test_streaming_errors_come_before_the_stream(world):
    body = {"model": "nope", "messages": [{"role": "user", "content": "x"}], "stream": True}
    r = httpx.post(f"{world['url']}/v1/chat/completions", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_lazy_lru_loading_and_admin_endpoints(world):
    url, engine = world["url"], world["engine"]
    outs = {n: answer(chat(url, n)) for n in ("alpha", "beta", "gamma")}
    assert len(engine.loaded_adapters()) <= 2  # LRU bound holds with more adapters in use
    assert {"alpha:1", "beta:1", "gamma:1"} <= set(engine.adapters())
    assert answer(chat(url, "alpha")) == outs["alpha"]  # evicted one reloads transparently
    r = httpx.post(f"{url}/admin/adapters/unload", json={"model": "beta"}, headers=ADMIN)
    assert r.status_code == 200 and "beta:1" not in engine.adapters()
    r = httpx.post(f"{url}/admin/adapters/unload", json={"model": "beta"}, headers=ADMIN)
    assert r.status_code == 404
    r = httpx.post(f"{url}/admin/adapters/load", json={"model": "beta"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["loaded"] == "beta:1"
    assert answer(chat(url, "beta")) == outs["beta"]
    r = httpx.post(f"{url}/admin/adapters/load", json={"bogus": 1}, headers=ADMIN)
    assert r.status_code == 422
    r = httpx.post(
        f"{url}/admin/adapters/load", json={"name": "x", "path": "/nonexistent"}, headers=ADMIN
    )
    assert r.status_code == 403  # no --adapter-root: loading by path is off


def test_concurrent_requests_for_different_adapters_share_a_batch(world):
    url = world["url"]
    models = ["alpha", "bot:1", "alpha", "bot:1", "base", "bot:1"]
    barrier = threading.Barrier(len(models))
    results: dict[int, str] = {}

    def go(i: int, m: str) -> None:
        barrier.wait()
        results[i] = answer(chat(url, m, content=f"q{i}"))

    threads = [threading.Thread(target=go, args=(i, m)) for i, m in enumerate(models)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == len(models)
    assert all(results[i].split() == ["yes"] * 3 for i in (1, 3, 5))
    batches = httpx.get(f"{url}/admin/adapters", headers=ADMIN).json()["recent_batches"]
    assert max(b["size"] for b in batches) > 1


def test_micro_batcher_makes_one_generate_call_for_mixed_adapters():
    class FakeEngine:
        def __init__(self):
            self.calls = []

        def generate(self, reqs):
            self.calls.append([r.adapter for r in reqs])
            return [f"out-{r.adapter}" for r in reqs]

    from tunewise.runtime.engine import GenRequest

    eng = FakeEngine()
    batcher = MicroBatcher(eng, window_s=0.2, max_batch=16)

    async def main():
        futs = [batcher.submit(GenRequest(messages=[], adapter=a)) for a in ("a", "b", "a", None)]
        return await asyncio.gather(*futs)

    try:
        outs = asyncio.run(main())
    finally:
        batcher.close()
    assert outs == ["out-a", "out-b", "out-a", "out-None"]
    assert eng.calls == [["a", "b", "a", None]]


def _sse_stream(url: str, model: str, **extra) -> tuple[str, str | None]:
    """(text, finish_reason) of a streamed chat completion."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "stream me"}],
        "max_tokens": 6,
        "stream": True,
        **extra,
    }
    lines = sse_lines(url, body)[1]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    return text, chunks[-1]["choices"][0]["finish_reason"]


def test_sse_finish_reason_is_the_generations_own(world):
    """'length' when max_tokens ran out, 'stop' when a stop string ended it; both as the
    non-streaming answer says."""
    url = world["url"]
    full = chat(url, "alpha", content="stream me", max_tokens=6).json()["choices"][0]
    assert full["finish_reason"] == "length"
    assert _sse_stream(url, "alpha") == (full["message"]["content"], "length")
    stop = full["message"]["content"][2:5]
    stopped = chat(url, "alpha", content="stream me", max_tokens=6, stop=[stop])
    cut = stopped.json()["choices"][0]
    assert cut["finish_reason"] == "stop" and len(cut["message"]["content"]) < 3
    assert _sse_stream(url, "alpha", stop=[stop]) == (cut["message"]["content"], "stop")


def test_sse_takes_finish_reason_and_errors_from_the_stream_itself():
    """The finish chunk repeats the stream's GenResult: no recount of tokens (this fake has no
    tokenizer, and 2 deltas for max_tokens 2 would have been guessed 'length'). An exception in
    the stream is matched by its type."""
    from tunewise.runtime.backend import GenRequest, GenResult, PromptTooLongError
    from tunewise.serve.app import _sse
    from tunewise.serve.schemas import ChatCompletionChunk

    class FakeEngine:
        def __init__(self, finish: str | Exception) -> None:
            self.finish = finish

        def stream(self, gen):
            yield "Hel"
            yield "lo"
            if isinstance(self.finish, Exception):
                raise self.finish
            return GenResult("Hello", 3, 2, self.finish)

    async def events(engine) -> list[dict]:
        head = ChatCompletionChunk(id="c1", model="m", system_fingerprint="f", choices=[])
        gen = GenRequest(messages=[], max_new_tokens=2)
        lines = [b.decode() async for b in _sse(engine, gen, head)]
        assert lines[-1] == "data: [DONE]\n\n"
        return [json.loads(ln[6:]) for ln in lines[:-1]]

    for reason in ("stop", "length"):
        chunks = asyncio.run(events(FakeEngine(reason)))
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello"
        assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": reason}
        assert {c["id"] for c in chunks} == {"c1"}
    too_long = asyncio.run(events(FakeEngine(PromptTooLongError("prompt of 9 tokens ..."))))
    assert too_long[-1]["error"]["code"] == "context_length_exceeded"
    bug = asyncio.run(events(FakeEngine(RuntimeError("boom"))))
    assert bug[-1]["error"]["type"] == "server_error"


def test_streamed_prompt_over_the_context_is_413_before_the_stream(world):
    body = {
        "model": "bot",
        "messages": [{"role": "user", "content": "word " * 3000}],
        "stream": True,
    }
    r = httpx.post(f"{world['url']}/v1/chat/completions", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "exceeds the context of" in r.json()["error"]["message"]


def test_every_route_but_health_requires_a_key(world):
    """The API-key dependency guards every /v1 route and the admin-key dependency every /admin
    route, including any route added to those routers later; only /health is open."""
    from fastapi.routing import APIRoute

    from tunewise.serve.app import admin, protected, public

    url = world["url"]
    routes = sorted(
        (method, route.path)
        for route in [*public.routes, *protected.routes, *admin.routes]
        if isinstance(route, APIRoute)
        for method in route.methods
    )
    assert ("GET", "/health") in routes and ("POST", "/v1/chat/completions") in routes
    assert len(routes) == 7
    assert all(r.path.startswith("/admin/") for r in admin.routes)
    assert not any(r.path.startswith("/admin") for r in [*public.routes, *protected.routes])
    refused = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}]
    for method, path in routes:
        is_admin = path.startswith("/admin/")
        for headers in [*refused, AUTH] if is_admin else refused:
            r = httpx.request(method, url + path, headers=headers, json={}, timeout=30)
            if path == "/health":
                assert r.status_code == 200
                continue
            assert r.status_code == 401, (method, path, headers)
            expected = "invalid_admin_key" if is_admin else "invalid_api_key"
            assert r.json()["error"]["code"] == expected
            assert r.headers["www-authenticate"] == "Bearer"
        # with the key the request gets past the check (an empty body is then a 422, not a 401)
        key = ADMIN if is_admin else AUTH
        r = httpx.request(method, url + path, headers=key, json={}, timeout=60)
        assert r.status_code in (200, 422), (method, path, r.text)


def test_admin_unload_goes_through_the_table(world):
    url, engine = world["url"], world["engine"]
    assert answer(chat(url, "gamma"))
    r = httpx.post(f"{url}/admin/adapters/unload", json={"model": "gamma"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["unloaded"] == "gamma:1"
    listing = httpx.get(f"{url}/admin/adapters", headers=ADMIN).json()
    assert "gamma" not in listing["resolved"] and "gamma:1" not in engine.adapters()
    assert answer(chat(url, "gamma"))  # resolved and loaded again on the next request


def test_rollback_during_traffic_switches_answers_without_failures(world):
    url, reg = world["url"], world["registry"]
    assert answer(chat(url, "bot@production")).split() == ["no"] * 3
    log: list[tuple[float, float, int, str]] = []
    stop = threading.Event()

    def client(i: int) -> None:
        n = 0
        while not stop.is_set():
            started = time.monotonic()
            r = chat(url, "bot@production", content=f"c{i}-{n}")
            text = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else ""
            log.append((started, time.monotonic(), r.status_code, text.split()[0] if text else ""))
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        while sum(1 for e in log if e[3] == "no") < 5:
            time.sleep(0.05)
        reg.rollback("bot", reason="bad answers")
        r = httpx.post(f"{url}/admin/adapters/refresh", headers=ADMIN, timeout=60)
        assert r.status_code == 200
        assert r.json()["changed"]["bot@production"] == {"from": "bot:2", "to": "bot:1"}
        switched_at = time.monotonic()
        while sum(1 for e in log if e[0] > switched_at) < 6:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert all(e[2] == 200 for e in log), [e for e in log if e[2] != 200]
    after = [e[3] for e in log if e[0] > switched_at]
    assert after and set(after) == {"yes"}
    assert {e[3] for e in log if e[1] < switched_at} <= {"no", "yes"}
    assert reg.history("bot")[-1]["reason"] == "bad answers"


def test_cli_serve_is_registered():
    from typer.testing import CliRunner

    from tunewise.cli import app

    r = CliRunner().invoke(app, ["serve", "--help"])
    assert r.exit_code == 0 and "--adapters" in r.output and "--api-key" in r.output


def test_serve_without_registry_unknown_model(tiny_model_dir):
    from tunewise.runtime.engine import Engine
    from tunewise.runtime.models import resolve

    engine = Engine(resolve(str(tiny_model_dir)), max_loaded_adapters=1)
    with running(create_app(engine, registry=None)) as url:
        r = httpx.post(
            f"{url}/v1/chat/completions",
            timeout=30,
            json={"model": "x", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 404
        r = httpx.post(
            f"{url}/v1/chat/completions",
            timeout=60,
            json={
                "model": engine.ref.name,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            },
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def test_tunewise_serve_subprocess_end_to_end(tiny_model_dir, tunewise_home, tmp_path):
    """The real CLI in its own process: registry alias, API key, then a clean shutdown."""
    import os
    import subprocess
    import sys

    reg = Registry()
    reg.add(
        make_run(tiny_model_dir, tmp_path / "run", seed=2),
        name="cli-bot",
        verdict=write_verdict(tmp_path / "v.json", True),
    )
    reg.promote("cli-bot", 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TUNEWISE_HOME": str(tunewise_home), "TUNEWISE_API_KEY": KEY}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunewise",
            "serve",
            "--base",
            str(tiny_model_dir),
            "--port",
            str(port),
            "--adapters",
            "cli-bot@production",
            "--threads",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.time() < deadline, "server did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        r = chat(url, "cli-bot@production")
        assert r.status_code == 200 and r.json()["system_fingerprint"] == "cli-bot:1"
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode is not None


def test_registry_adapter_gets_the_system_prompt_it_was_trained_with(tmp_path, tiny_model_dir):
    """A client that sends no system turn gets the project's prompt, not the template default."""
    from tunewise.runtime.models import resolve
    from tunewise.serve.app import ModelTable

    run = make_run(tiny_model_dir, tmp_path / "run", name="bot")
    raw = json.loads((run / "run.json").read_text())
    raw["config"]["task"] = {"system_prompt": "Triage the ticket."}
    (run / "run.json").write_text(json.dumps(raw))
    reg = Registry()
    reg.add(run, name="bot", verdict=write_verdict(tmp_path / "v.json", ship=True))

    class FakeEngine:
        ref = resolve(str(tiny_model_dir))

        def __init__(self):
            self.loaded = []

        def adapters(self):
            return self.loaded

        def load_adapter(self, name, path, base_hash=None):
            self.loaded.append(name)

    table = ModelTable(FakeEngine(), reg)
    key = table.resolve("bot:1")
    assert table.system_prompts[key] == "Triage the ticket."
