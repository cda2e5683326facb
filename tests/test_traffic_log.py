"""The traffic log of `tunewise serve --log-traffic`: records, scrubbing, rotation, kill -9."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from _serve_helpers import running
from _ship_helpers import make_run, write_verdict
from _train_helpers import subprocess_env
from tunewise.registry.store import Registry
from tunewise.serve.app import ServeSettings, create_app
from tunewise.serve.traffic import TrafficLog, TrafficSettings, read_traffic, traffic_files

EMAIL, PHONE, CARD = "jane.doe@example.com", "(555) 123-4567", "4111 1111 1111 1111"
PII_TEXT = f"mail {EMAIL} or call {PHONE}, card {CARD}"


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from tunewise.runtime.engine import Engine
    from tunewise.runtime.models import resolve

    return Engine(resolve(str(tiny_model_dir)), max_loaded_adapters=2, batch_size=4)


@pytest.fixture(scope="module")
def registry(tiny_model_dir, tmp_path_factory) -> Registry:
    tmp = tmp_path_factory.mktemp("traffic-reg")
    reg = Registry(tmp / "registry")
    ship = write_verdict(tmp / "verdict.json", True)
    reg.add(make_run(tiny_model_dir, tmp / "r1", seed=1), name="bot", verdict=ship)
    reg.promote("bot", 1)
    return reg


def chat(url: str, model: str, content: str = "hello", **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 3}
    r = httpx.post(f"{url}/v1/chat/completions", json={**body, **extra}, timeout=60)
    assert r.status_code == 200, r.text
    return r


def stream_text(url: str, model: str, content: str) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 3,
        "stream": True,
    }
    parts = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"]
                if delta and "content" in delta[0]["delta"]:
                    parts.append(delta[0]["delta"]["content"])
    return "".join(parts)


def serve_with_log(engine, registry, folder: Path, **traffic):
    settings = ServeSettings(batch_window_ms=5, log_traffic=folder, **traffic)
    return create_app(engine, settings=settings, registry=registry)


def all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_plain_and_streaming_requests_are_logged_with_their_resolution(engine, registry, tmp_path):
    folder = tmp_path / "traffic"
    with running(serve_with_log(engine, registry, folder)) as url:
        plain = chat(url, "bot@production", "first").json()
        streamed = stream_text(url, "bot:1", "second")
        chat(url, "base", "third")
    records = read_traffic(folder)
    assert [r["messages"] for r in records] == [
        [{"role": "user", "content": c}] for c in ("first", "second", "third")
    ]
    first, second, third = records
    assert first["id"] == plain["id"] and first["status"] == 200
    assert first["model"] == "bot@production"
    assert first["resolved"] == {"key": "bot:1", "alias": "production"}
    assert first["answer"] == plain["choices"][0]["message"]["content"]
    assert first["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert first["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    assert first["completion_tokens"] == plain["usage"]["completion_tokens"] == 3
    assert first["latency_ms"] > 0 and first["time"].endswith("+00:00")
    assert second["resolved"] == {"key": "bot:1", "alias": None}
    assert second["answer"] == streamed and second["completion_tokens"] == 3
    assert third["resolved"]["key"] == engine.ref.name
    for path in traffic_files(folder):  # closed at shutdown: every line whole
        assert path.read_bytes().endswith(b"\n")


def test_planted_pii_never_reaches_the_disk(engine, registry, tmp_path):
    folder = tmp_path / "traffic"
    with running(serve_with_log(engine, registry, folder)) as url:
        chat(url, "base", PII_TEXT)
        stream_text(url, "bot", PII_TEXT)
    data = all_bytes(folder)
    assert data, "nothing was logged"
    for secret in (EMAIL, PHONE, CARD, "4111111111111111", "jane.doe", "123-4567"):
        assert secret.encode() not in data
    records = read_traffic(folder)
    assert len(records) == 2
    for rec in records:
        assert rec["messages"][0]["content"] == "mail [email] or call [phone], card [card]"


def test_size_rotation_closes_whole_files(tmp_path):
    log = TrafficLog(TrafficSettings(dir=tmp_path, max_mb=0.001))  # ~1 KB per file
    for i in range(12):
        log.submit({"id": i, "answer": "x" * 300})
    log.close()
    files = traffic_files(tmp_path)
    assert len(files) >= 4
    for path in files:
        data = path.read_bytes()
        assert data.endswith(b"\n")
        [json.loads(line) for line in data.splitlines()]  # each parses fully
    assert [r["id"] for r in read_traffic(tmp_path)] == list(range(12))


def test_torn_last_line_is_skipped(tmp_path):
    log = TrafficLog(TrafficSettings(dir=tmp_path))
    for i in range(3):
        log.submit({"id": i, "answer": "ok"})
    log.close()
    (last,) = traffic_files(tmp_path)
    with last.open("ab") as f:
        f.write(b'{"id": 3, "answer": "cut sh')  # what a kill -9 mid-write would leave
    assert [r["id"] for r in read_traffic(tmp_path)] == [0, 1, 2]


def test_sampling_with_a_seed_logs_a_deterministic_subset(engine, registry, tmp_path):
    folder = tmp_path / "traffic"
    app = serve_with_log(engine, registry, folder, traffic_sample=0.5, traffic_seed=7)
    with running(app) as url:
        for i in range(10):
            chat(url, "base", f"msg {i}", max_tokens=1)
    rng = random.Random(7)
    expected = [f"msg {i}" for i in range(10) if rng.random() < 0.5]
    assert 0 < len(expected) < 10
    assert [r["messages"][0]["content"] for r in read_traffic(folder)] == expected


def test_sampling_seed_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEWISE_TRAFFIC_SEED", "3")
    log = TrafficLog(TrafficSettings(dir=tmp_path, sample=0.5))
    rng = random.Random(3)
    assert [log.sampled() for _ in range(20)] == [rng.random() < 0.5 for _ in range(20)]
    log.close()


def test_retention_deletes_closed_files_older_than_keep_days(tmp_path):
    old = tmp_path / "traffic-20200101T000000Z-0.jsonl"
    fresh = tmp_path / "traffic-20200101T000000Z-1.jsonl"
    for path in (old, fresh):
        path.write_text('{"id": 1}\n')
    week_ago = time.time() - 8 * 86400
    os.utime(old, (week_ago, week_ago))
    log = TrafficLog(TrafficSettings(dir=tmp_path, keep_days=7))
    log.close()
    assert not old.exists() and fresh.exists()


def test_bad_traffic_settings_are_one_line_errors(tmp_path):
    from tunewise.errors import UserError

    for bad in ({"sample": 0}, {"sample": 1.5}, {"max_mb": 0}, {"keep_days": -1}):
        with pytest.raises(UserError, match="--traffic-"):
            TrafficLog(TrafficSettings(dir=tmp_path, **bad))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "server exited"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not start")


def _post_quietly(url: str) -> None:
    body = {"model": "base", "messages": [{"role": "user", "content": "x"}], "max_tokens": 8}
    with contextlib.suppress(httpx.HTTPError):  # the server dies under it
        httpx.post(f"{url}/v1/chat/completions", json=body, timeout=5)


def test_kill_9_mid_traffic_leaves_readable_files(tiny_model_dir, tmp_path):
    folder, port = tmp_path / "traffic", _free_port()
    cmd = [sys.executable, "-m", "tunewise", "serve", "--base", str(tiny_model_dir)]
    cmd += ["--port", str(port), "--log-traffic", str(folder), "--traffic-max-mb", "0.001"]
    proc = subprocess.Popen(
        cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        for i in range(6):
            chat(url, "base", f"request {i} " + "pad " * 40)
        deadline = time.time() + 10  # the writer is asynchronous: let it catch up
        while len(read_traffic(folder)) < 6 and time.time() < deadline:
            time.sleep(0.05)
        # one more request in flight when the process dies
        threading.Thread(target=_post_quietly, args=(url,), daemon=True).start()
        time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()
    files = traffic_files(folder)
    assert len(files) >= 3, "0.001 MB files must have rotated"
    for path in files[:-1]:  # closed: end on a newline and parse fully
        data = path.read_bytes()
        assert data.endswith(b"\n")
        [json.loads(line) for line in data.splitlines()]
    records = read_traffic(folder)
    contents = [r["messages"][0]["content"].split()[:2] for r in records]
    assert contents[:6] == [["request", str(i)] for i in range(6)]
    with files[-1].open("ab") as f:  # and a torn tail on the open file is skipped
        f.write(b'{"id": "torn')
    assert len(read_traffic(folder)) == len(records)
