"""`tunewise rate --label`: a person accepts, corrects or rejects drafts; resumable, atomic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _ship_helpers import assert_one_line
from _traffic_helpers import WEATHER, rows
from tunewise.cli import app
from tunewise.data.labelling import Decision, Labelling, label_drafts
from tunewise.errors import UserError

runner = CliRunner()


def draft(rid: str, user: str, answer: str, **extra) -> dict:
    return {
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ],
        **extra,
        "origin": {
            "traffic_id": rid,
            "traffic_file": "traffic-20261201T100000Z-0.jsonl",
            "time": "2026-12-01T10:00:00.000+00:00",
            "why": "format_failed",
            "labelled_by": None,
        },
    }


DRAFTS = [
    draft("d1", "my parcel is late", "Category: shipping"),
    draft("d2", "charged twice", "billing?"),
    draft("d3", "buy cheap watches", "Category: billing"),
    draft("d4", "weather in Paris", "sunny", tools=[WEATHER]),
    draft("d5", "password reset please", "Category: login"),
]


@pytest.fixture
def drafts(tmp_path: Path) -> Path:
    path = tmp_path / "new.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in DRAFTS))
    return path


def scripted(decisions: list[Decision]):
    asked: list[tuple[str, str | None]] = []

    def decide(d, problem):
        asked.append((d.key, problem))
        return decisions.pop(0)

    return decide, asked


def test_accept_correct_reject_then_resume_where_it_stopped(tmp_path, drafts):
    out = tmp_path / "labelled.jsonl"
    decide, asked = scripted(
        [
            Decision("accept"),
            Decision("correct", "Category: billing"),
            Decision("reject"),
            Decision("quit"),
        ]
    )
    counts = label_drafts(Labelling(drafts, out), decide)
    assert dict(counts) == {"accept": 1, "correct": 1, "reject": 1}
    got = rows(out)
    assert [r["origin"]["traffic_id"] for r in got] == ["d1", "d2"]
    assert all(r["origin"]["labelled_by"] == "human" for r in got)
    assert got[0]["messages"] == DRAFTS[0]["messages"]
    assert got[1]["messages"][-1] == {"role": "assistant", "content": "Category: billing"}
    assert got[1]["origin"]["why"] == "format_failed"  # the rest of origin is kept
    rejected = json.loads((tmp_path / "labelled.jsonl.rejected.json").read_text())
    assert rejected == {"rejected": ["d3"]}
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files

    # A new session asks only what has no decision: d4 and d5 (d4's call is corrected).
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    decide, asked = scripted([Decision("correct", call), Decision("skip")])
    label_drafts(Labelling(drafts, out), decide)
    assert [k for k, _ in asked] == ["d4", "d5"]
    got = rows(out)
    turn = got[-1]["messages"][-1]
    assert turn["content"] is None
    assert turn["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }
    assert Labelling(drafts, out).pending()[0].key == "d5"  # skipped: asked again next time


def test_a_correction_that_makes_no_valid_example_is_asked_again(tmp_path, drafts):
    out = tmp_path / "labelled.jsonl"
    wrong = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    session = Labelling(drafts, out)
    d4 = next(d for d in session.pending() if d.key == "d4")
    with pytest.raises(UserError, match="get_time"):
        session.apply(d4, Decision("correct", wrong))
    decide, asked = scripted(
        [Decision("skip")] * 3
        + [Decision("correct", "  "), Decision("correct", "fine"), Decision("quit")]
    )
    label_drafts(session, decide)
    assert asked[3] == ("d4", None) and asked[4][0] == "d4" and "empty" in asked[4][1]
    assert [r["origin"]["traffic_id"] for r in rows(out)] == ["d4"]


def test_the_terminal_flow_and_its_errors(tmp_path, drafts):
    out = tmp_path / "labelled.jsonl"
    keys = "a\nc\nCategory: billing\\nPriority: high\nr\nq\n"
    result = runner.invoke(app, ["rate", "--label", str(drafts), "--out", str(out)], input=keys)
    assert result.exit_code == 0, result.output
    got = rows(out)
    assert [r["origin"]["traffic_id"] for r in got] == ["d1", "d2"]
    assert got[1]["messages"][-1]["content"] == "Category: billing\nPriority: high"
    assert "2 draft(s) left" in result.output
    again = runner.invoke(app, ["rate", "--label", str(drafts), "--out", str(out)], input="q\n")
    assert "2 draft(s) to label, 3 decided before" in again.output

    no_out = runner.invoke(app, ["rate", "--label", str(drafts)])
    assert_one_line(no_out, "--label needs --out")
    nothing = runner.invoke(app, ["rate"])
    assert_one_line(nothing, "EVAL_DIR, --a and --b")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": DRAFTS[0]["messages"]}) + "\n")
    no_origin = runner.invoke(app, ["rate", "--label", str(bad), "--out", str(out)])
    assert_one_line(no_origin, "bad.jsonl:1: origin.traffic_id")
