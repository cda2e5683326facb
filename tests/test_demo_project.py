"""The ticket-triage demo project: its config loads, its data is what the generator makes, and the
data has the size, variety and format the ladder relies on."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tunewise.config import load_project
from tunewise.data.schema import parse_jsonl

DEMO = Path(__file__).resolve().parent.parent / "examples" / "ticket-triage"
DATA = DEMO / "data" / "tickets.jsonl"
CATEGORIES = {"billing", "account", "bug", "feature_request", "shipping", "refund"}
PRIORITIES = {"high", "medium", "low"}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]


def test_project_yaml_loads_and_matches_the_data(rows: list[dict]) -> None:
    cfg = load_project(DEMO / "project.yaml")
    assert cfg.name == "ticket-triage"
    assert cfg.task.type == "labels"
    assert cfg.data.train == DATA
    assert cfg.data.docs == DEMO / "docs" and cfg.data.docs.is_dir()
    assert cfg.work_dir == DEMO / ".tunewise"
    assert cfg.task.labels is not None
    assert set(cfg.task.labels["category"]) == CATEGORIES
    assert cfg.task.labels["priority"] == ["high", "medium", "low"]
    assert re.compile(cfg.task.output_pattern).groupindex.keys() == {"category", "priority"}
    # the fine-tune is trained on the very prompt every candidate is evaluated with
    assert {r["messages"][0]["content"] for r in rows} == {cfg.task.system_prompt}
    for label in CATEGORIES | PRIORITIES:
        assert label in cfg.task.system_prompt
    assert cfg.train.method == "lora" and 1 <= cfg.train.epochs <= 3


def test_generator_reproduces_committed_files_byte_for_byte(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(DEMO / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (tmp_path / "data" / "tickets.jsonl").read_bytes() == DATA.read_bytes()
    made = sorted(p.name for p in (tmp_path / "docs").glob("*.md"))
    committed = sorted(p.name for p in (DEMO / "docs").glob("*.md"))
    assert made == committed
    for name in made:
        assert (tmp_path / "docs" / name).read_bytes() == (DEMO / "docs" / name).read_bytes(), name


def test_dataset_size_labels_and_format(rows: list[dict]) -> None:
    examples, problems = parse_jsonl(DATA)
    assert problems == []
    assert len(examples) == len(rows) >= 600
    cfg = load_project(DEMO / "project.yaml")
    rx = re.compile(cfg.task.output_pattern)
    labels = Counter()
    for ex in examples:
        m = rx.fullmatch(ex.target)
        assert m, f"line {ex.line}: {ex.target!r}"
        labels[m["category"], m["priority"]] += 1
    cats = Counter(c for c, _ in labels.elements())
    prios = Counter(p for _, p in labels.elements())
    assert set(cats) == CATEGORIES and set(prios) == PRIORITIES
    # roughly balanced categories, a realistic skew of priorities
    assert max(cats.values()) - min(cats.values()) <= len(rows) * 0.05
    assert prios["high"] < prios["medium"] and prios["high"] < prios["low"]


def test_tickets_are_varied_and_distinct(rows: list[dict]) -> None:
    texts = [r["messages"][1]["content"] for r in rows]
    normalised = [" ".join(t.lower().split()) for t in texts]
    assert len(set(normalised)) == len(texts), "exact duplicate tickets"
    words = [len(t.split()) for t in texts]
    assert min(words) <= 8 and max(words) >= 50, "one-liners to short paragraphs"
    tags = Counter(t for r in rows for t in r["tags"])
    assert tags["multi_issue"] >= 30 and tags["sloppy"] >= 30
    assert tags["escalated_repeat"] + tags["escalated_legal"] >= 10
    # no class is one template: every (category, priority)
    # with 10+ tickets has 10+ distinct openings
    by_label: dict[str, set[str]] = {}
    for r, t in zip(rows, texts, strict=True):
        by_label.setdefault(r["messages"][2]["content"], set()).add(" ".join(t.lower().split()[:4]))
    counts = Counter(r["messages"][2]["content"] for r in rows)
    for label, openings in by_label.items():
        if counts[label] >= 10:
            assert len(openings) >= 10, label


def test_no_near_duplicates_by_the_data_check(rows: list[dict]) -> None:
    from tunewise.data.checks import check_examples

    examples, _ = parse_jsonl(DATA)
    report = check_examples(examples)  # no tokenizer: duplicates, format and PII only
    kinds = {w.kind for w in report.warnings}
    assert not any("dup" in k for k in kinds), [
        w.message for w in report.warnings if "dup" in w.kind
    ]
    assert report.format is not None and report.format.coverage == 1.0


def test_help_centre_articles() -> None:
    docs = sorted((DEMO / "docs").glob("*.md"))
    assert len(docs) >= 30
    for doc in docs:
        text = doc.read_text(encoding="utf-8")
        assert text.startswith("# "), doc.name
        assert 80 <= len(text.split()) <= 250, doc.name
    sla = (DEMO / "docs" / "sla-and-priority-levels.md").read_text(encoding="utf-8")
    for level in PRIORITIES:
        assert f"**{level}**" in sla
