"""Teacher labels (issue #27 point 4): an OpenAI-compatible model answers the selected requests;
only answers that keep the format and agree with a second sample are kept. Also: an OpenAI
fine-tuning training file loads with `tunewise data check` unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from typer.testing import CliRunner

from _serve_helpers import http_stub
from _traffic_helpers import WEATHER, labels_project, record, rows, write_log
from tunewise.cli import app
from tunewise.data.schema import load_examples

runner = CliRunner()


def _call(name: str, args: dict) -> dict:
    fn = {"name": name, "arguments": json.dumps(args)}
    return {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": fn}]}


def _answer(user: str, temperature: float) -> dict:
    """The stub teacher's message, chosen by a word in the request."""
    if "weather" in user:
        return _call("get_weather", {"city": "Paris"})
    if "clock" in user:  # a call to a function nobody offered
        return _call("get_time", {})
    if "waver" in user:  # greedy says billing, a sample says login: a guess
        text = "Category: login" if temperature else "Category: billing"
        return {"role": "assistant", "content": text}
    if "chatty" in user:
        return {"role": "assistant", "content": "I believe this is about billing."}
    return {"role": "assistant", "content": "Category: shipping"}


class _Teacher(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict]] = []

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Teacher.bodies.append(body)
        user = body["messages"][-1]["content"]
        message = _answer(user, body.get("temperature") or 0)
        finish = "length" if "endless" in user else "stop"
        payload = {
            "id": "x",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3},
        }
        raw = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def teacher() -> Iterator[str]:
    _Teacher.bodies.clear()
    with http_stub(_Teacher) as url:
        yield url


REQUESTS = {
    "good": "my parcel is stuck at the depot since monday",
    "waver": "waver between two answers about my account",
    "chatty": "chatty question about an invoice I received",
    "endless": "endless story about an order that went wrong",
}


def from_traffic(tmp_path: Path, teacher_url: str, *extra: str):
    project = labels_project(tmp_path)
    log = write_log(tmp_path / "log", [record(k, v) for k, v in REQUESTS.items()])
    out = tmp_path / "labelled.jsonl"
    args = ["data", "from-traffic", str(log.parent), "--out", str(out), "-p", str(project)]
    args += ["--margin-budget", "0", "--teacher", teacher_url, "--teacher-model", "big"]
    return runner.invoke(app, [*args, *extra]), out


def test_teacher_answers_that_break_the_format_or_disagree_are_dropped(tmp_path, teacher):
    result, out = from_traffic(tmp_path, teacher, "--teacher-samples", "2")
    assert result.exit_code == 0, result.output
    kept = rows(out)
    assert [r["origin"]["traffic_id"] for r in kept] == ["good"]
    assert kept[0]["origin"]["labelled_by"] == "teacher:big"
    assert kept[0]["messages"][-1] == {"role": "assistant", "content": "Category: shipping"}
    assert "kept 1, dropped 3" in result.output
    for why in ("samples disagree", "format", "cut at max tokens"):
        assert why in result.output
    # What the teacher could not label stays a production draft for a person.
    drafts = rows(tmp_path / "labelled.drafts.jsonl")
    assert sorted(r["origin"]["traffic_id"] for r in drafts) == ["chatty", "endless", "waver"]
    assert all(r["origin"]["labelled_by"] is None for r in drafts)
    # The second sample is drawn above temperature 0; the project's format reaches the teacher.
    temps = sorted({b["temperature"] for b in _Teacher.bodies})
    assert temps == [0, 0.7]
    assert all(b["model"] == "big" for b in _Teacher.bodies)


def test_one_sample_keeps_a_guess_and_a_rerun_asks_the_cache(tmp_path, teacher):
    result, out = from_traffic(tmp_path, teacher)
    assert result.exit_code == 0, result.output
    assert sorted(r["origin"]["traffic_id"] for r in rows(out)) == ["good", "waver"]
    asked = len(_Teacher.bodies)
    assert asked == len(REQUESTS)
    (tmp_path / "again").mkdir()
    again, _ = from_traffic(tmp_path / "again", teacher)
    assert again.exit_code == 0, again.output
    assert len(_Teacher.bodies) == asked  # the same requests: answered from the cache


def test_teacher_calls_must_name_an_offered_tool(tmp_path, teacher):
    tools = [WEATHER]
    recs = [
        record("w", "weather in Paris please", answer="sunny", tools=tools),
        record("c", "what does the clock say in Rome", answer="noon", tools=tools),
    ]
    log = write_log(tmp_path / "log", recs)
    (tmp_path / "project.yaml").write_text(
        yaml.safe_dump({"name": "wx", "data": {"train": "x.jsonl"}, "task": {"type": "tools"}})
    )
    out = tmp_path / "labelled.jsonl"
    args = ["data", "from-traffic", str(log.parent), "--out", str(out)]
    args += ["-p", str(tmp_path / "project.yaml"), "--teacher", teacher, "--teacher-model", "big"]
    result = runner.invoke(app, [*args, "--teacher-samples", "2"])
    assert result.exit_code == 0, result.output
    kept = rows(out)
    assert [r["origin"]["traffic_id"] for r in kept] == ["w"]
    turn = kept[0]["messages"][-1]
    assert turn["tool_calls"][0]["function"]["name"] == "get_weather"
    assert all(b["tools"][0]["function"]["name"] == "get_weather" for b in _Teacher.bodies)
    assert "format" in result.output
    check = runner.invoke(app, ["data", "check", str(out)])
    assert check.exit_code == 0, check.output


def test_a_tunewise_server_on_loopback_is_a_teacher(tmp_path, tiny_model_dir):
    from _serve_helpers import running
    from tunewise.runtime.engine import Engine
    from tunewise.runtime.models import resolve
    from tunewise.serve.app import create_app

    engine = Engine(resolve(str(tiny_model_dir)), batch_size=2)
    log = write_log(tmp_path / "log", [record("a", "say something kind"), record("b", "hi")])
    out = tmp_path / "labelled.jsonl"
    with running(create_app(engine)) as url:
        args = ["data", "from-traffic", str(log.parent), "--out", str(out)]
        args += ["--teacher", f"{url}/v1", "--teacher-model", "base", "--teacher-samples", "2"]
        result = runner.invoke(app, [*args, "--teacher-max-tokens", "4"])
    assert result.exit_code == 0, result.output
    # A greedy server answers a sample as it answers greedily: kept unless cut at 4 tokens.
    labelled = rows(out) + rows(out.with_name("labelled.drafts.jsonl"))
    assert sorted(r["origin"]["traffic_id"] for r in labelled) == ["a", "b"]
    assert all(r["origin"]["labelled_by"] == "teacher:base" for r in rows(out))


def test_teacher_needs_a_model_name(tmp_path):
    log = write_log(tmp_path / "log", [record("a", "hello")])
    args = ["data", "from-traffic", str(log.parent), "--out", str(tmp_path / "o.jsonl")]
    result = runner.invoke(app, [*args, "--teacher", "http://127.0.0.1:9/v1"])
    assert result.exit_code == 2 and "--teacher-model" in result.output


OPENAI_FILE = [
    {
        "messages": [
            {"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
            {"role": "user", "content": "What's the capital of France?"},
            {"role": "assistant", "content": "Paris, as if everyone doesn't know.", "weight": 1},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
            {"role": "user", "content": "Who wrote 'Romeo and Juliet'?"},
            {"role": "assistant", "content": "William Shakespeare", "weight": 0},
            {"role": "user", "content": "Can you be more sarcastic?"},
            {"role": "assistant", "content": "Oh, just some guy named Shakespeare.", "weight": 1},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_id",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
        ],
        "tools": [WEATHER],
        "parallel_tool_calls": False,
    },
]


def test_an_openai_fine_tuning_file_loads_unchanged(tmp_path):
    # The training file OpenAI's fine-tuning API takes: system/user/assistant, a call turn
    # without content, and the `weight` key OpenAI allows on assistant turns (read, ignored: see
    # docs/after-the-ship.md).
    path = tmp_path / "openai.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in OPENAI_FILE))
    result = runner.invoke(app, ["data", "check", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["examples"] == 3 and report["errors"] == []
    examples = load_examples(path)
    assert all("weight" not in m for ex in examples for m in ex.messages)
    assert examples[2].messages[-1]["tool_calls"][0]["function"]["name"] == "get_weather"
