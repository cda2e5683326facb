"""``tunewise data check``: every error kind with its exact file:line, warnings, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunewise.cli import app
from tunewise.data import checks
from tunewise.data.checks import check_file, find_pii, luhn_ok

runner = CliRunner()

GOOD = json.dumps(
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
)


def msgs(*turns: tuple[str, object]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})


def write(tmp_path: Path, lines: list[str], name: str = "data.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def chat(user: str, answer: str, system: str | None = None) -> str:
    turns = [("system", system)] if system else []
    return msgs(*turns, ("user", user), ("assistant", answer))


# Each error kind from the issue: (bad line, field, message fragment). The bad line is line 3
# (line 2 is blank, which is skipped but still counted).
ERROR_CASES = {
    "not_json": ('{"messages": [', "(line)", "not valid JSON"),
    "missing_messages": ('{"conversation": []}', "messages", "missing"),
    "messages_not_list": ('{"messages": "hi"}', "messages", "expected a list, got str"),
    "unknown_role": (
        msgs(("human", "hi"), ("assistant", "x")),
        "messages[0].role",
        "unknown role 'human'",
    ),
    "content_not_string": (
        msgs(("user", 42), ("assistant", "x")),
        "messages[0].content",
        "expected a string, got int",
    ),
    "content_empty": (msgs(("user", "   "), ("assistant", "x")), "messages[0].content", "empty"),
    "system_not_first": (
        msgs(("user", "hi"), ("system", "be nice"), ("user", "hi"), ("assistant", "x")),
        "messages[1].role",
        "system message must be the first message",
    ),
    "consecutive_same_role": (
        msgs(("user", "hi"), ("user", "again"), ("assistant", "x")),
        "messages[1].role",
        "two consecutive 'user' turns",
    ),
    "no_assistant": (msgs(("system", "s"), ("user", "hi")), "messages", "no assistant turn"),
    "last_not_assistant": (
        msgs(("user", "hi"), ("assistant", "x"), ("user", "and?")),
        "messages[2].role",
        "last turn must be 'assistant'",
    ),
}


@pytest.mark.parametrize("kind", sorted(ERROR_CASES))
def test_each_error_kind_names_file_line_and_exits_2(tmp_path: Path, kind: str) -> None:
    bad, fld, fragment = ERROR_CASES[kind]
    path = write(tmp_path, [GOOD, "", bad, GOOD])
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 2, result.output
    expected = f"{path}:3: {fld}: "
    line = next((ln for ln in result.output.splitlines() if ln.startswith(expected)), None)
    assert line is not None, result.output
    assert fragment in line


def test_all_errors_are_collected_not_only_the_first(tmp_path: Path) -> None:
    path = write(tmp_path, ["not json", GOOD, '{"messages": 3}', msgs(("user", "x"))])
    report = check_file(path)
    assert [(p.line, p.field) for p in report.errors] == [
        (1, "(line)"),
        (3, "messages"),
        (4, "messages"),
    ]
    assert report.exit_code() == 2
    assert report.examples == 1
    data = report.to_json()
    assert data["errors"][0]["text"].startswith(f"{path}:1: (line): not valid JSON")


def test_json_report_and_exit_code_on_errors(tmp_path: Path) -> None:
    path = write(tmp_path, [GOOD, '{"messages": "x"}'])
    result = runner.invoke(app, ["data", "check", str(path), "--json"])
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert data["errors"][0]["line"] == 2
    assert data["errors"][0]["field"] == "messages"


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "check", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2
    assert "nope.jsonl" in result.output and "not found" in result.output


def test_clean_file_exits_0_and_strict_warnings_exit_1(tmp_path: Path) -> None:
    cats = ["billing", "shipping", "login"]
    clean = [
        chat(
            f"ticket number {i} about topic {i * 7} in area {cats[i % 3]}",
            f"Category: {cats[i % 3]}",
        )
        for i in range(12)
    ]
    path = write(tmp_path, clean)
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "clean" in result.output

    dup = write(tmp_path, [*clean, clean[0]], "dup.jsonl")
    assert runner.invoke(app, ["data", "check", str(dup)]).exit_code == 0
    strict = runner.invoke(app, ["data", "check", str(dup), "--strict"])
    assert strict.exit_code == 1
    assert "exact_duplicate" in strict.output


def _kinds(report: checks.CheckReport) -> dict[str, checks.Finding]:
    return {w.kind: w for w in report.warnings}


def test_duplicates_near_duplicates_and_conflicts(tmp_path: Path) -> None:
    lines = [
        chat(
            "my parcel never arrived and the tracking page has not changed since monday",
            "Category: shipping",
        ),
        chat(
            "my parcel never arrived and the tracking page has not changed since monday",
            "Category: shipping",
        ),
        chat(
            "My parcel never arrived, and the tracking page has NOT updated since Monday!!",
            "Category: shipping",
        ),
        chat("i was charged twice for the same order last week please refund", "Category: billing"),
        chat(
            "I was charged twice for the same order last week, please refund.", "Category: refund"
        ),
        chat("cannot log in after resetting my password on the mobile app", "Category: login"),
        chat(
            "the invoice pdf shows the wrong company address for our account", "Category: billing"
        ),
    ]
    report = check_file(write(tmp_path, lines))
    found = _kinds(report)
    assert found["exact_duplicate"].lines == [2]
    assert found["exact_duplicate"].details["groups"] == [[1, 2]]
    assert [1, 2, 3] in found["near_duplicate"].details["clusters"]
    conflict = found["conflict"]
    assert conflict.lines == [4, 5]
    assert conflict.details["groups"][0]["answers"] == ["Category: billing", "Category: refund"]


def test_format_outliers_show_the_inferred_pattern(tmp_path: Path) -> None:
    cats, pris = ["billing", "shipping", "login", "other"], ["low", "high"]
    lines = [
        chat(
            f"support request {i} with details {i * 13} and more words",
            f"Category: {cats[i % 4]}\nPriority: {pris[i % 2]}",
        )
        for i in range(16)
    ]
    lines.insert(5, chat("odd one out about a refund and more", "billing, high"))
    lines.insert(9, chat("another odd one about a login and more", "Category: login"))
    report = check_file(write(tmp_path, lines))
    assert report.format is not None
    assert report.format.pattern == "Category: <category>\nPriority: <priority>"
    assert report.format.regex == r"^Category: (?P<category>.+)\nPriority: (?P<priority>.+)$"
    fmt_warning = _kinds(report)["format"]
    assert fmt_warning.lines == [6, 10]
    assert "Category: <category>\\nPriority: <priority>" in fmt_warning.message
    assert report.stats["labels"]["priority"] == {"low": 8, "high": 8}


def test_rare_labels_are_listed(tmp_path: Path) -> None:
    lines = [chat(f"question number {i} about accounts {i}", "account") for i in range(20)]
    lines += [chat(f"question number {i} about cards {i}", "card") for i in range(20)]
    lines += [chat("what is the weather like on mars today", "weather")]
    report = check_file(write(tmp_path, lines))
    assert report.format is not None and report.format.kind == "label"
    rare = _kinds(report)["rare_label"]
    assert rare.details["rare"] == {"weather": 1}
    assert rare.lines == [41]


def test_pii_detection_with_luhn() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
    found = find_pii(
        "Mail jane.doe@example.co.uk or call +1 (415) 555-0132, card 4111 1111 1111 1111."
    )
    assert found["email"] == ["jane.doe@example.co.uk"]
    assert found["card"] == ["4111 1111 1111 1111"]
    assert len(found["phone"]) == 1
    assert "card" not in find_pii("order 4111 1111 1111 1112 was shipped")  # fails Luhn
    assert find_pii("ticket 12345 opened on 2024-01-02") == {}


def test_pii_warning_lists_lines_and_masks_values(tmp_path: Path) -> None:
    lines = [
        chat("reset my password", "done"),
        chat("my email is bob@example.com, please update", "done"),
    ]
    report = check_file(write(tmp_path, lines))
    pii = _kinds(report)["pii_email"]
    assert pii.lines == [2]
    assert "bob@example.com" not in json.dumps(pii.details)


def test_token_lengths_use_the_real_tokenizer(tmp_path: Path, real_model) -> None:
    from tunewise.runtime import models

    tok = models.load_tokenizer(real_model)
    lines = [chat("short question", "yes"), chat("word " * 300, "a long one")]
    report = check_file(write(tmp_path, lines), model=str(real_model.path), max_len=128)
    stats = report.stats["tokens"]
    expected = [
        len(tok.apply_chat_template(json.loads(ln)["messages"], tokenize=True)["input_ids"])
        for ln in lines
    ]
    assert (stats["min"], stats["max"]) == (min(expected), max(expected))
    assert stats["over_max_len"] == 1
    assert _kinds(report)["too_long"].lines == [2]


def test_unknown_model_named_by_user_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, [GOOD])
    result = runner.invoke(app, ["data", "check", str(path), "--model", "no-such-model"])
    assert result.exit_code == 2
    assert "unknown model 'no-such-model'" in result.output


def test_non_utf8_file_names_the_line_and_bom_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    latin1 = chat("caf\u00e9", "ok").replace("\\u00e9", "\u00e9").encode("latin-1")
    path.write_bytes((GOOD + "\n").encode() + latin1 + b"\n")
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 2
    assert f"{path}:2: (line): not valid UTF-8" in result.output
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + (GOOD + "\n").encode())
    report = check_file(bom)
    assert report.errors == [] and report.examples == 1
