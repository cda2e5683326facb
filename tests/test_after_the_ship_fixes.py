"""Bugs the after-the-ship acceptance test (tests/test_after_the_ship_e2e.py) ran into.

A production answer that is blank (a small model that emits only newlines, or stops at once) is
the clearest request worth a label, yet `data from-traffic` left it out as "no valid example":
neither a teacher nor a person ever saw the requests production failed worst.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from _traffic_helpers import labels_project, record, rows, write_log
from tunewise.cli import app
from tunewise.data.labelling import Decision, Labelling, label_drafts
from tunewise.data.teacher import label_with_teacher
from tunewise.runtime.backend import GenResult

runner = CliRunner()
BLANK = "my parcel never arrived and the courier says it was delivered next door"
FINE = "the invoice shows a charge twice for the same subscription upgrade"


def _drafts(tmp_path: Path) -> Path:
    project = labels_project(tmp_path)
    log = write_log(
        tmp_path / "log",
        [record("r-fine", FINE, "Category: billing"), record("r-blank", BLANK, "\n\n\n")],
    )
    out = tmp_path / "new.jsonl"
    args = ["data", "from-traffic", str(log.parent), "--out", str(out), "-p", str(project)]
    result = runner.invoke(app, [*args, "--margin-budget", "0"])
    assert result.exit_code == 0, result.output
    return out


def test_a_blank_production_answer_is_a_draft_that_failed_its_format(tmp_path):
    got = rows(_drafts(tmp_path))
    assert [r["origin"]["traffic_id"] for r in got] == ["r-blank", "r-fine"]
    assert got[0]["origin"]["why"] == "format_failed"
    assert got[0]["messages"][-1] == {"role": "assistant", "content": "\n\n\n"}


class _Teacher:
    model = "big"

    def generate(self, requests, *, progress=False):
        return [GenResult("Category: shipping", 5, 3, "stop") for _ in requests]


def test_a_teacher_labels_the_request_production_left_blank(tmp_path):
    drafts = rows(_drafts(tmp_path))
    kept, rest, report = label_with_teacher(drafts, _Teacher())
    assert report.kept == 2 and not rest
    blank = next(r for r in kept if r["origin"]["traffic_id"] == "r-blank")
    assert blank["messages"][-1] == {"role": "assistant", "content": "Category: shipping"}
    assert blank["origin"]["labelled_by"] == "teacher:big"


def test_rate_label_loads_a_blank_draft_and_asks_again_when_it_is_accepted(tmp_path):
    drafts, out = _drafts(tmp_path), tmp_path / "labelled.jsonl"
    session = Labelling(drafts, out)
    asked: list[tuple[str, str | None]] = []
    decisions = [Decision("accept"), Decision("correct", "Category: shipping"), Decision("quit")]

    def decide(draft, problem):
        asked.append((draft.key, problem))
        return decisions.pop(0)

    label_drafts(session, decide)
    assert asked[0] == ("r-blank", None)
    assert asked[1][0] == "r-blank" and "empty" in str(asked[1][1])
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert line["messages"][-1]["content"] == "Category: shipping"
    assert line["origin"]["labelled_by"] == "human"
