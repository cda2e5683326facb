"""`tunewise data from-traffic`: served requests become drafts worth a label (issue #27 point 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from _ship_helpers import assert_one_line
from _traffic_helpers import WEATHER, WORDS, labels_project, record, rows, write_log
from tunewise.cli import app
from tunewise.data import seal
from tunewise.data.from_traffic import ORIGIN_KEYS, read_items, select
from tunewise.data.schema import load_examples
from tunewise.serve.traffic import iter_traffic

runner = CliRunner()


def split_text(root: Path, split: str, k: int = 0) -> str:
    return load_examples(root / ".tunewise" / "splits" / f"{split}.jsonl")[k].user_text


def test_requests_like_train_or_test_are_dropped_and_the_seal_records_no_use(tmp_path):
    project = labels_project(tmp_path)
    test_file = tmp_path / ".tunewise" / "splits" / "test.jsonl"
    train0, test0, test1 = (
        split_text(tmp_path, "train"),
        split_text(tmp_path, "test"),
        split_text(tmp_path, "test", 1),
    )
    words = test1.split()
    near_test = " ".join(["refund" if w != "refund" else "coupon" for w in words[:1]] + words[1:])
    fresh = "my parcel never arrived and the courier says it was delivered to a neighbour"
    log = write_log(
        tmp_path / "log",
        [
            record("r-train", train0.upper() + "!"),  # exact after case and punctuation
            record("r-test", test0),  # exact: the sealed test set's own request
            record("r-near", near_test),  # one word changed
            record("r-fresh", fresh),
            record("r-again", fresh + " "),  # the same request twice: the first is kept
        ],
    )
    out = tmp_path / "new.jsonl"
    args = ["data", "from-traffic", str(log.parent), "--out", str(out), "-p", str(project)]
    result = runner.invoke(app, [*args, "--margin-budget", "0"])  # no model: margins elsewhere
    assert result.exit_code == 0, result.output
    got = rows(out)
    assert [r["origin"]["traffic_id"] for r in got] == ["r-fresh"]
    origin = got[0]["origin"]
    assert tuple(origin) == ORIGIN_KEYS
    assert origin["traffic_file"] == log.name and origin["labelled_by"] is None
    assert origin["time"] == "2026-12-01T10:00:07.000+00:00"
    assert got[0]["messages"][-1] == {"role": "assistant", "content": "Category: billing"}
    shown_as = ("same input as a train line", "same input as a test line")
    for shown in (*shown_as, "near-duplicate of a test line", "repeated in traffic"):
        assert shown in result.output
    # Compared with, never evaluated on: the sealed test file has no final use on record, and
    # nothing asked for --final.
    assert seal.is_sealed(test_file) and seal.final_uses(test_file) == []


def test_ranking_puts_low_margin_then_disagreement_then_format_first(tmp_path):
    def item(rid, answer="Category: billing", **extra):
        return record(rid, f"request {rid} " + " ".join(WORDS[: 5 + len(rid)]), answer, **extra)

    recs = [
        item("a"),
        item("bb", answer="maybe billing?"),  # fails the format
        item("ccc", shadow={"answer": "Category: login"}),  # the challenger disagrees
        item("dddd", answer="no idea"),  # low margin and failed format
        item("eeeee"),  # low margin
        item("ffffff"),
        item("ggggggg", shadow={"answer": "Category:  billing"}),  # agrees up to whitespace
    ]
    log = write_log(tmp_path / "log", recs)
    margins = {"a": 5.0, "bb": 4.0, "ccc": 6.0, "dddd": 0.1, "eeeee": 0.5, "ffffff": 2.0}
    margins["ggggggg"] = 3.0

    def scorer(examples):
        return [margins[ex.user_text.split()[1]] for ex in examples], None

    def format_ok(answer, tools):
        return answer.startswith("Category: ")

    def items():
        return read_items(iter_traffic(log.parent))[0]

    picked = select(
        read_items(iter_traffic(log.parent))[0], {}, format_ok=format_ok, margins=scorer
    )
    order = [(it.id, it.why) for it in picked.items]
    assert order == [
        ("dddd", "low_margin+format_failed"),
        ("eeeee", "low_margin"),
        ("ccc", "disagreement"),
        ("bb", "format_failed"),
        ("ffffff", "rest"),
        ("ggggggg", "rest"),
        ("a", "rest"),
    ]
    limited = select(
        read_items(iter_traffic(log.parent))[0], {}, format_ok=format_ok, margins=scorer, limit=2
    )
    assert [it.id for it in limited.items] == ["dddd", "eeeee"]
    assert limited.counts["over --limit"] == 5


def test_cli_ranks_disagreement_and_format_and_keeps_the_limit(tmp_path):
    project = labels_project(tmp_path)
    recs = [
        record("plain", "the app crashes when I export my invoice to the desktop"),
        record("badfmt", "I was charged twice for one order this month", answer="billing?"),
        record("shadowed", "where is my parcel, the tracking page says nothing"),
        record("failed", "my login code never arrives by email"),
    ]
    log = write_log(tmp_path / "log", recs)
    # the challenger's answers, in its own files, linked by the production record's id
    shadows = [
        {"shadow_of": "shadowed", "answer": "Category: shipping", "status": 200},
        {"shadow_of": "failed", "error": "prompt too long", "status": 400},
    ]
    write_log(tmp_path / "log", shadows, name="shadow-20261201T100001Z-0.jsonl")
    out = tmp_path / "new.jsonl"
    args = ["data", "from-traffic", str(log.parent), "--out", str(out), "-p", str(project)]
    result = runner.invoke(app, [*args, "--margin-budget", "0", "--limit", "2"])
    assert result.exit_code == 0, result.output
    got = [(r["origin"]["traffic_id"], r["origin"]["why"]) for r in rows(out)]
    assert got == [("shadowed", "disagreement"), ("badfmt", "format_failed")]
    assert "label margins not scored" in result.output
    everything = runner.invoke(app, [*args, "--margin-budget", "0"])
    assert everything.exit_code == 0, everything.output
    why = {r["origin"]["traffic_id"]: r["origin"]["why"] for r in rows(out)}
    assert why["failed"] == "rest"  # a challenger that failed disagrees with nothing


def test_label_margins_are_scored_with_the_model_on_a_labels_task(tmp_path, tiny_model_dir):
    from tunewise.config import load_project
    from tunewise.eval.traffic_signals import select_requests

    project = labels_project(tmp_path)
    cfg = yaml.safe_load(project.read_text())
    cfg["model"] = {"base": str(tiny_model_dir)}
    project.write_text(yaml.safe_dump(cfg))
    texts = [
        "the courier lost my parcel again",
        "please reset my password, I am locked out",
        "why was my card charged twice for one plan",
    ]
    log = write_log(tmp_path / "log", [record(f"m{i}", t) for i, t in enumerate(texts)])
    selection, _ = select_requests(iter_traffic(log.parent), load_project(project))
    assert not any("margins not scored" in n for n in selection.notes)
    margins = [it.margin for it in selection.items]
    assert all(isinstance(m, float) and m >= 0 for m in margins)
    assert margins == sorted(margins)  # same tier (rest or low margin): least sure first
    tiers = [it.reasons[:1] for it in selection.items]
    assert tiers == sorted(tiers, key=lambda t: t != ["low_margin"])


def test_call_answers_become_openai_tool_call_turns_that_data_check_passes(tmp_path):
    calls = [
        {
            "id": "call_7",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    bad = [{**calls[0], "function": {"name": "get_time", "arguments": "{}"}}]
    recs = [
        record(
            "t1",
            "weather in Paris?",
            answer='<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
            tools=[WEATHER],
            tool_calls=calls,
        ),
        record("t2", "and what time is it in Rome?", answer="...", tools=[WEATHER], tool_calls=bad),
        record("t3", "thanks, that is all", answer="You're welcome!", tools=[WEATHER]),
    ]
    log = write_log(tmp_path / "log", recs)
    (tmp_path / "tools.json").write_text(json.dumps([WEATHER]))
    cfg = {"name": "wx", "data": {"train": "none.jsonl"}, "task": {"type": "tools"}}
    cfg["task"]["tools"] = "tools.json"
    (tmp_path / "project.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "new.jsonl"
    args = ["data", "from-traffic", str(log.parent), "--out", str(out)]
    result = runner.invoke(app, [*args, "-p", str(tmp_path / "project.yaml")])
    assert result.exit_code == 0, result.output
    got = {r["origin"]["traffic_id"]: r for r in rows(out)}
    turn = got["t1"]["messages"][-1]
    assert turn["role"] == "assistant" and turn["content"] is None
    assert turn["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }
    assert got["t1"]["tools"] == [WEATHER]
    # A call to a function the request did not offer fails the format, ranks first, and stays
    # a loadable draft (its text) for a person to correct.
    assert got["t2"]["origin"]["why"] == "format_failed"
    assert "tool_calls" not in got["t2"]["messages"][-1]
    assert next(iter(got)) == "t2"
    check = runner.invoke(app, ["data", "check", str(out), "--tools", str(tmp_path / "tools.json")])
    assert check.exit_code == 0, check.output
    assert "0 error(s)" in check.output


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("{not json", ":2: not a JSON record"),
        ('{"id": "x", "answer": "hi"}', ":2: messages:"),
        ('["a", "list"]', ":2: not a JSON object"),
        ('{"shadow_of": 3, "answer": "x"}', ":2: shadow_of:"),
        ('{"messages": [{"role": "user", "content": "hi"}], "answer": "x"}', ":2: id:"),
    ],
)
def test_a_bad_traffic_line_is_one_line_naming_file_and_line(tmp_path, line, needle):
    log = write_log(tmp_path / "log", [record("ok", "hello there")])
    with open(log, "a") as fh:
        fh.write(line + "\n")
    out = tmp_path / "new.jsonl"
    result = runner.invoke(app, ["data", "from-traffic", str(log.parent), "--out", str(out)])
    assert_one_line(result, log.name + needle)
    assert not out.exists()


def test_a_torn_last_line_is_skipped_and_an_empty_folder_is_one_line(tmp_path):
    log = write_log(tmp_path / "log", [record("ok", "hello there")])
    with open(log, "a") as fh:
        fh.write('{"id": "cut", "messages": [')  # what a kill -9 leaves
    out = tmp_path / "new.jsonl"
    result = runner.invoke(app, ["data", "from-traffic", str(log.parent), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [r["origin"]["traffic_id"] for r in rows(out)] == ["ok"]
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["data", "from-traffic", str(tmp_path / "empty"), "--out", str(out)])
    assert_one_line(empty, "no traffic-*.jsonl files")
