"""`tunewise compare-traffic DIR [--labels FILE]`: agreement of production and its shadow, and the
paired metric on labelled requests through the statistics of `tunewise compare`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from _ship_helpers import assert_one_line
from tunewise.cli import app
from tunewise.eval.results import CandidateResult, EvalRun, ItemResult
from tunewise.eval.stats import compare

PATTERN = r"Category: (?P<category>\w+)"


def _call(call_id: str, arguments: str) -> dict:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": arguments},
    }


def request(rid: str, answer: str, key: str = "bot:1", **extra) -> dict:
    return {
        "time": "2026-12-06T00:00:00.000+00:00",
        "id": rid,
        "model": "bot@production",
        "resolved": {"key": key, "alias": "production"},
        "messages": [{"role": "user", "content": f"question {rid}"}],
        "answer": answer,
        "finish_reason": "stop",
        "latency_ms": 10.0,
        "prompt_tokens": 5,
        "completion_tokens": 2,
        **extra,
        "status": 200,
    }


def shadow(of: str, answer: str, key: str = "bot:2", **extra) -> dict:
    return {
        "time": "2026-12-06T00:00:01.000+00:00",
        "shadow_of": of,
        "model": "bot@staging",
        "resolved": {"key": key, "alias": "staging"},
        "answer": answer,
        "finish_reason": "stop",
        "latency_ms": 12.0,
        "queued_ms": 1.0,
        "prompt_tokens": 5,
        "completion_tokens": 2,
        **extra,
        "status": 200,
    }


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def log_dir(tmp_path) -> Path:
    """r1..r3 label answers (r2: the two disagree), r4 the same call written two ways, r5 never
    shadowed, r6 a shadow failure, and a shadow answer whose request is not in the log."""
    folder = tmp_path / "traffic"
    folder.mkdir()
    text4 = json.dumps({"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}})
    text4 = f"<tool_call>{text4}</tool_call>"
    requests = [
        request("r1", "Category: billing"),
        request("r2", "Category: billing"),
        request("r3", "Category: login"),
        request("r4", text4, tool_calls=[_call("call_a", '{"city": "Paris", "unit": "c"}')]),
        request("r5", "Category: login"),
        request("r6", "Category: login"),
    ]
    shadows = [
        shadow("r1", "Category: billing"),
        shadow("r2", "Category: shipping"),
        shadow("r3", "Category: login"),
        shadow("r4", "calling", tool_calls=[_call("call_b", '{"unit": "c", "city": "Paris"}')]),
        {"shadow_of": "r6", "model": "bot@staging", "error": "too long", "status": 413},
        shadow("gone", "Category: login"),
    ]
    write(folder / "traffic-20261206T000000Z-0.jsonl", requests[:3])
    write(folder / "traffic-20261206T000100Z-1.jsonl", requests[3:])
    write(folder / "shadow-20261206T000000Z-0.jsonl", shadows)
    return folder


def label(tid: str, answer: str, by: str = "human") -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"question {tid}"},
            {"role": "assistant", "content": answer},
        ],
        "origin": {"traffic_id": tid, "labelled_by": by},
    }


@pytest.fixture
def labels(tmp_path) -> Path:
    rows = [
        label("r1", "Category: billing"),
        label("r2", "Category: shipping", by="teacher:gpt-4o-mini"),
        label("r3", "Category: login"),
        label("r5", "Category: login"),  # its request has no shadow answer
        label("nowhere", "Category: login"),  # names no request in the log
    ]
    return write(tmp_path / "labels.jsonl", rows)


def run(*args: str):
    return CliRunner().invoke(app, ["compare-traffic", *map(str, args)])


def test_agreement_and_counts(log_dir, tmp_path):
    out = tmp_path / "out.json"
    result = run(log_dir, "--json", out)
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())
    assert got["counts"] == {
        "requests": 6,
        "paired": 4,
        "shadow_failed": 1,
        "unshadowed": 1,
        "orphan_shadows": 1,
        "labels": 0,
        "labels_paired": 0,
        "labels_without_request": 0,
        "labels_without_shadow": 0,
    }
    (group,) = got["groups"]
    assert (group["production"], group["shadow"], group["pairs"]) == ("bot:1", "bot:2", 4)
    # r1 and r3 say the same; r4 makes the same call (ids and key order aside) in other words
    assert (group["agree"], group["text_agree"]) == (3, 2)
    assert (group["with_calls"], group["calls_agree"], group["call_agreement"]) == (1, 1, 1.0)
    assert group["disagreeing_ids"] == ["r2"]
    assert group["comparison"] is None
    assert "4 answered by both" in result.output and "agreement" in result.output


def _expected(production: list[float], shadow: list[float], metric: str) -> dict:
    """What `tunewise compare` computes for the same scores, from eval.stats directly."""
    ids = ["r1", "r2", "r3"]

    def cand(name: str, scores: list[float]) -> CandidateResult:
        items = [ItemResult(i, "", {metric: s}) for i, s in zip(ids, scores, strict=True)]
        return CandidateResult(name, name, items)

    run_ = EvalRun("x", "traffic", "h", metric, ids, [cand("production", production)])
    run_.candidates.append(cand("shadow", shadow))
    comp = compare(run_, baselines=["production"], pairs=[("shadow", "production")])
    return comp.to_dict()


def test_paired_metric_on_labels_is_compare_s(log_dir, labels, tmp_path):
    out = tmp_path / "out.json"
    result = run(log_dir, "--labels", labels, "--json", out)
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())
    c = got["counts"]
    assert (c["labels"], c["labels_paired"], c["labels_without_shadow"]) == (5, 3, 1)
    assert c["labels_without_request"] == 1
    (group,) = got["groups"]
    assert group["labelled"] == 3 and got["primary_metric"] == "exact_match"
    comp = group["comparison"]
    (pair,) = comp["pairs"]
    assert (pair["candidate"], pair["baseline"], pair["metric"]) == (
        "shadow",
        "production",
        "exact_match",
    )
    assert pair["diff"] == pytest.approx(1 / 3) and pair["test"] == "mcnemar-exact"
    want = _expected([1.0, 0.0, 1.0], [1.0, 1.0, 1.0], "exact_match")
    assert comp["metrics"] == want["metrics"] and comp["pairs"] == want["pairs"]
    assert "labelled request(s)" in result.output and "mcnemar-exact" in result.output


def _project(root: Path) -> Path:
    (root / "all.jsonl").write_text(json.dumps(label("x", "Category: billing")) + "\n")
    cfg = {
        "name": "tix",
        "data": {"train": "all.jsonl"},
        "task": {
            "type": "labels",
            "output_pattern": PATTERN,
            "labels": {"category": ["billing", "shipping", "login"]},
        },
        "eval": {"graders": ["label", "format"]},
    }
    path = root / "project.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_with_a_project_its_graders_and_primary_metric_score(log_dir, labels, tmp_path):
    out = tmp_path / "out.json"
    result = run(log_dir, "--labels", labels, "--project", _project(tmp_path), "--json", out)
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())
    assert got["primary_metric"] == "accuracy"
    comp = got["groups"][0]["comparison"]
    metrics = {p["metric"] for p in comp["pairs"]}
    assert {"accuracy", "format_compliance", "exact_match", "macro_f1"} <= metrics
    want = _expected([1.0, 0.0, 1.0], [1.0, 1.0, 1.0], "accuracy")
    acc = next(p for p in comp["pairs"] if p["metric"] == "accuracy")
    assert acc == next(p for p in want["pairs"] if p["metric"] == "accuracy")


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ("not json", "(line)"),
        ({**label("r1", "a"), "messages": [{"role": "robot", "content": "q"}]}, "[0].role"),
        ({"messages": label("r1", "a")["messages"]}, "origin"),
        ({**label("r1", "a"), "origin": {"labelled_by": "human"}}, "origin.traffic_id"),
        ({**label("r1", "a"), "origin": {"traffic_id": "r1", "labelled_by": "me"}}, "by"),
    ],
)
def test_bad_label_lines_are_one_line_errors_with_file_and_line(log_dir, tmp_path, row, field):
    bad = tmp_path / "labels.jsonl"
    line = row if isinstance(row, str) else json.dumps(row)
    bad.write_text(json.dumps(label("r3", "Category: login")) + "\n" + line + "\n")
    assert_one_line(run(log_dir, "--labels", bad), f"{bad}:2:", field)


def test_a_label_given_twice_names_both_lines(log_dir, tmp_path):
    bad = write(tmp_path / "labels.jsonl", [label("r1", "x"), label("r1", "y")])
    assert_one_line(run(log_dir, "--labels", bad), f"{bad}:2: origin.traffic_id", "line 1")


def test_bad_traffic_records_name_file_line_and_field(log_dir):
    path = log_dir / "shadow-20261206T000000Z-0.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[1]["answer"] = 7
    write(path, rows)
    assert_one_line(run(log_dir), f"{path}:2: answer: expected a string")


def test_a_folder_without_traffic_is_one_line(tmp_path):
    assert_one_line(run(tmp_path), "no traffic-*.jsonl files")
    assert_one_line(run(tmp_path / "nope"), "no such directory")
