"""The external (OpenAI-compatible) candidate, against a stub server on loopback started here."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import ClassVar

import pytest

from _serve_helpers import http_stub
from tunewise.config import ExternalConfig
from tunewise.errors import UserError
from tunewise.runtime.cache import GenCache
from tunewise.runtime.engine import GenRequest
from tunewise.runtime.external import ExternalClient

KEY = "sekret-test-key"


class _Stub(BaseHTTPRequestHandler):
    """Behaviour chosen by the requested model name, so one server covers every case."""

    calls: ClassVar[Counter] = Counter()
    bodies: ClassVar[list[dict]] = []

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, code: int, payload: dict, headers: dict | None = None) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def do_POST(self) -> None:
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Stub.bodies.append(body)
        model = body["model"]
        user = body["messages"][-1]["content"]
        _Stub.calls[(model, user)] += 1
        n = _Stub.calls[(model, user)]
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            self._send(
                401,
                {
                    "error": {
                        "message": "Incorrect API key provided",
                        "type": "invalid_request_error",
                    }
                },
            )
            return
        if model == "missing":
            self._send(404, {"error": {"message": "The model `missing` does not exist"}})
            return
        if model == "bad":
            self._send(400, {"error": {"message": "max_tokens is too large"}})
            return
        if model == "flaky" and n <= 2:  # two failures, then an answer
            if n == 1:
                self._send(429, {"error": {"message": "Rate limit reached"}}, {"Retry-After": "0"})
            else:
                self._send(503, {"error": {"message": "overloaded"}})
            return
        if model == "down":
            self._send(500, {"error": {"message": "internal"}})
            return
        if model == "slow":
            time.sleep(1.0)
        text = f"ANSWER: {user.upper()} END tail"
        words = text.split()
        limit = body.get("max_tokens", 100)
        finish = "length" if len(words) > limit else "stop"
        self._send(
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": " ".join(words[:limit])},
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": len(user.split()),
                    "completion_tokens": min(limit, len(words)),
                },
            },
        )


@pytest.fixture
def stub() -> Iterator[str]:
    _Stub.calls.clear()
    _Stub.bodies.clear()
    with http_stub(_Stub) as url:
        yield url


@pytest.fixture
def api_key(monkeypatch) -> str:
    monkeypatch.setenv("STUB_KEY", KEY)
    return "STUB_KEY"


def _reqs(*texts: str, **kw) -> list[GenRequest]:
    return [
        GenRequest(
            messages=[{"role": "system", "content": "s"}, {"role": "user", "content": t}], **kw
        )
        for t in texts
    ]


def test_generate_in_order_with_key_and_greedy(stub: str, api_key: str) -> None:
    with ExternalClient(stub, "echo", api_key_env=api_key, concurrency=3) as client:
        got = client.generate(_reqs("one", "two words", "three", "four", max_new_tokens=20))
    assert [g.text for g in got] == [
        f"ANSWER: {t.upper()} END tail" for t in ("one", "two words", "three", "four")
    ]
    assert (
        got[1].prompt_tokens == 2
        and got[1].completion_tokens == 5
        and got[1].finish_reason == "stop"
    )
    assert all(b["temperature"] == 0 and b["max_tokens"] == 20 for b in _Stub.bodies)


def test_stop_and_length(stub: str, api_key: str) -> None:
    client = ExternalClient(stub, "echo", api_key_env=api_key)
    stopped = client.generate(_reqs("hello", stop=[" END"]))[0]
    assert (
        stopped.text == "ANSWER: HELLO" and stopped.finish_reason == "stop"
    )  # trimmed client-side too
    assert _Stub.bodies[-1]["stop"] == [" END"]
    short = client.generate(_reqs("hello", max_new_tokens=2))[0]
    assert short.text == "ANSWER: HELLO" and short.finish_reason == "length"


def test_retries_429_and_5xx_then_succeeds(stub: str, api_key: str) -> None:
    client = ExternalClient(stub, "flaky", api_key_env=api_key, backoff=0.01)
    got = client.generate(_reqs("retry me"))
    assert got[0].text.startswith("ANSWER: RETRY ME")
    assert _Stub.calls[("flaky", "retry me")] == 3


def test_gives_up_after_retries(stub: str, api_key: str) -> None:
    client = ExternalClient(stub, "down", api_key_env=api_key, backoff=0.01, max_retries=2)
    with pytest.raises(UserError, match=r"failed after 3 attempts \(HTTP 500: internal\)"):
        client.generate(_reqs("x"))
    assert _Stub.calls[("down", "x")] == 3


def test_timeout_is_retried_then_reported(stub: str, api_key: str) -> None:
    client = ExternalClient(
        stub, "slow", api_key_env=api_key, timeout=0.2, backoff=0.01, max_retries=1
    )
    with pytest.raises(UserError, match="ReadTimeout"):
        client.generate(_reqs("x"))


def test_clear_errors_for_401_404_400(stub: str, api_key: str, monkeypatch) -> None:
    monkeypatch.setenv("WRONG_KEY", "nope")
    with pytest.raises(
        UserError,
        match=r"refused the API key \(HTTP 401: Incorrect API key provided\); check \$WRONG_KEY",
    ):
        ExternalClient(stub, "echo", api_key_env="WRONG_KEY", backoff=0.01).generate(_reqs("a"))
    assert _Stub.calls[("echo", "a")] == 1  # never retried
    with pytest.raises(UserError, match=r"unknown model 'missing'.*HTTP 404"):
        ExternalClient(stub, "missing", api_key_env=api_key).generate(_reqs("a"))
    with pytest.raises(UserError, match="not found"):
        ExternalClient(stub.removesuffix("/v1"), "echo", api_key_env=api_key).generate(_reqs("a"))
    with pytest.raises(UserError, match="HTTP 400: max_tokens is too large"):
        ExternalClient(stub, "bad", api_key_env=api_key).generate(_reqs("a"))
    with pytest.raises(UserError, match="NOT_SET_ANYWHERE"):
        ExternalClient(stub, "echo", api_key_env="NOT_SET_ANYWHERE")
    with pytest.raises(UserError, match="base_url"):
        ExternalClient("127.0.0.1:1/v1", "echo")


def test_unreachable_endpoint_is_a_user_error() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ExternalClient(
        f"http://127.0.0.1:{port}/v1", "echo", backoff=0.01, max_retries=1, timeout=2
    )
    with pytest.raises(UserError, match="ConnectError"):
        client.generate(_reqs("a"))


def test_cached_rerun_makes_no_call(stub: str, api_key: str) -> None:
    cfg = ExternalConfig(name="frontier", base_url=stub, model="echo", api_key_env=api_key)
    client = ExternalClient.from_config(cfg, cache=GenCache())
    first = client.generate(_reqs("a", "b"))
    calls = sum(_Stub.calls.values())
    again = client.generate(_reqs("a", "b"))
    assert sum(_Stub.calls.values()) == calls
    assert [r.text for r in again] == [r.text for r in first] and all(r.cached for r in again)
    client.generate(_reqs("a", max_new_tokens=3))  # other decoding parameters: a new call
    assert sum(_Stub.calls.values()) == calls + 1
    assert client.name == "frontier"
    with pytest.raises(UserError, match="log-probabilities"):
        client.score_continuations([], ["x"])
