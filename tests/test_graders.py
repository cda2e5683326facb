"""Graders, judges and constrained label mode, on canned outputs (no model needed)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from tunewise.config import ProjectConfig
from tunewise.data.schema import Example
from tunewise.errors import UserError
from tunewise.eval.constrained import ConstrainedLabeler, build_template
from tunewise.eval.graders import (
    Grader,
    LabelSpec,
    LLMJudge,
    PairwiseJudge,
    json_scores,
    parse_score,
    parse_winner,
    win_rate,
)

PATTERN = r"^Category: (?P<category>[A-Za-z ]+)\nPriority: (?P<priority>low|medium|high)$"


def ex(user: str, answer: str) -> Example:
    return Example(
        messages=[{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    )


def cfg(**task) -> ProjectConfig:
    return ProjectConfig.model_validate(
        {"name": "t", "data": {"train": "train.jsonl"}, "task": task, "root": Path("/tmp")}
    )


TRAIN = [
    ex("I was charged twice", "Category: billing\nPriority: high"),
    ex("App crashes on start", "Category: bug\nPriority: high"),
    ex("Please add dark mode", "Category: feature\nPriority: low"),
    ex("Invoice is wrong", "Category: billing\nPriority: medium"),
]


def test_label_fields_accuracy_and_per_field() -> None:
    g = Grader(cfg(type="labels", output_pattern=PATTERN), TRAIN)
    assert g.spec is not None and g.spec.fields == ["category", "priority"]
    assert g.spec.labels == {
        "category": ["billing", "bug", "feature"],
        "priority": ["high", "low", "medium"],
    }
    item = ex("double charge", "Category: billing\nPriority: high")

    scores, gold, pred, meta = g.grade("Category: billing\nPriority: low", item)
    assert (
        scores["accuracy"] == 0.0
        and scores["accuracy_category"] == 1.0
        and scores["accuracy_priority"] == 0.0
    )
    assert scores["format_compliance"] == 1.0
    assert gold == "billing | high" and pred == "billing | low"
    assert meta["predicted_fields"] == {"category": "billing", "priority": "low"}

    scores, _, pred, _ = g.grade("Category: Billing\nPriority: high", item)  # case is not an error
    assert scores["accuracy"] == 1.0 and pred == "billing | high"
    assert scores["exact_match"] == 0.0  # ... but it is not the exact answer


def test_unparseable_answer_is_wrong_with_no_predicted_label() -> None:
    g = Grader(cfg(type="labels", output_pattern=PATTERN), TRAIN)
    scores, gold, pred, _ = g.grade(
        "I think this is about money.", ex("x", "Category: billing\nPriority: high")
    )
    assert scores == {
        "exact_match": 0.0,
        "format_compliance": 0.0,
        "accuracy_category": 0.0,
        "accuracy_priority": 0.0,
        "accuracy": 0.0,
    }
    assert gold == "billing | high" and pred is None


def test_format_is_strict_but_extraction_is_lenient() -> None:
    g = Grader(cfg(type="labels", output_pattern=PATTERN), TRAIN)
    out = "Category: bug\nPriority: high\nLet me know if you need more."
    scores, _, pred, _ = g.grade(out, ex("crash", "Category: bug\nPriority: high"))
    assert scores["format_compliance"] == 0.0
    assert scores["accuracy"] == 1.0 and pred == "bug | high"
    # A value outside the allowed set matches the regex but is not compliant.
    scores, _, _, _ = g.grade(
        "Category: refunds\nPriority: high", ex("x", "Category: bug\nPriority: high")
    )
    assert scores["format_compliance"] == 0.0


def test_whole_answer_label_without_pattern() -> None:
    train = [ex("hi", "greeting"), ex("bye", "farewell")]
    g = Grader(cfg(type="labels"), train)
    s, gold, pred, _ = g.grade("  Greeting ", ex("hello", "greeting"))
    assert (
        s["accuracy"] == 1.0
        and s["format_compliance"] == 1.0
        and gold == "greeting"
        and pred == "greeting"
    )
    s, _, pred, _ = g.grade("weather", ex("hello", "greeting"))
    assert s["accuracy"] == 0.0 and s["format_compliance"] == 0.0 and pred == "weather"


def test_configured_labels_must_name_pattern_groups() -> None:
    with pytest.raises(UserError, match="not a named group"):
        LabelSpec.from_config(cfg(type="labels", output_pattern=PATTERN, labels={"topic": ["a"]}))
    with pytest.raises(UserError, match="invalid regex"):
        LabelSpec.from_config(cfg(type="labels", output_pattern="(?P<x>"))


def test_json_validity_schema_and_accuracy() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    assert json_scores('{"city": "Oslo"}', '{"city":"Oslo"}', schema) == {
        "json_valid": 1.0,
        "schema_valid": 1.0,
        "accuracy": 1.0,
    }
    assert json_scores('```json\n{"city": 3}\n```', '{"city":"Oslo"}', schema) == {
        "json_valid": 1.0,
        "schema_valid": 0.0,
        "accuracy": 0.0,
    }
    assert json_scores("{city: Oslo}", '{"city":"Oslo"}', schema)["json_valid"] == 0.0
    g = Grader(cfg(type="json", json_schema=schema), [])
    scores, *_ = g.grade('{"city": "Oslo"}', ex("where", '{"city": "Oslo"}'))
    assert (
        scores["schema_valid"] == 1.0 and scores["accuracy"] == 1.0 and scores["exact_match"] == 1.0
    )
    with pytest.raises(UserError, match="invalid schema"):
        Grader(cfg(type="json", json_schema={"type": "no-such-type"}), [])


def test_text_task_has_no_accuracy_only_what_graders_score() -> None:
    # "accuracy" on free text would be exact match under another name: not scored, not shown.
    g = Grader(cfg(type="text"), [])
    scores, gold, pred, _ = g.grade("Paris.", ex("capital of France?", "Paris."))
    assert scores == {"exact_match": 1.0} and gold is None and pred is None


def test_text_task_reference_metrics_score_against_every_reference() -> None:
    import sacrebleu

    config = ProjectConfig.model_validate(
        {
            "name": "t",
            "data": {"train": "train.jsonl"},
            "task": {"type": "text"},
            "eval": {"graders": ["chrf", "bleu", "rougeL", "exact"], "primary_metric": "chrf"},
            "root": Path("/tmp"),
        }
    )
    g = Grader(config, [])
    item = Example(
        messages=ex("Cocum | food | English", "Cocum serves English food.").messages,
        meta={"references": ["Cocum is an English restaurant.", "English food at Cocum."]},
    )
    answer = "Cocum is an English restaurant."
    scores, *_ = g.grade(answer, item)
    assert set(scores) == {"chrf", "bleu", "rougeL", "exact_match"}
    # The second reference matches word for word: every reference counts, not just the first.
    assert scores["chrf"] == pytest.approx(1.0) and scores["rougeL"] == pytest.approx(1.0)
    assert scores["exact_match"] == 0.0  # exact match reads the assistant turn only
    only_first = sacrebleu.sentence_chrf(answer, ["Cocum serves English food."]).score / 100
    assert only_first < 0.7


@dataclass
class _Reply:
    text: str


class CannedBackend:
    """A judge backend that replies from a list, recording the prompts it saw."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)
        self.prompts: list[str] = []

    def generate(self, requests, *, progress: bool = False):
        self.prompts += [r.messages[-1]["content"] for r in requests]
        return [_Reply(self.replies.pop(0)) for _ in requests]


def test_judge_scores_and_counts_parse_failures() -> None:
    items = [ex("q1", "a1"), ex("q2", "a2"), ex("q3", "a3")]
    backend = CannedBackend(["Score: 5", "I cannot decide", "**Score:** 2"])
    judge = LLMJudge(backend)
    scores, replies = judge.score_many(items, ["a1", "nope", "meh"])
    assert scores[0] == 1.0 and math.isnan(scores[1]) and scores[2] == 0.25
    assert replies[1] == "I cannot decide"
    assert "Reference answer:\na1" in backend.prompts[0] and "5: correct" in backend.prompts[0]
    # The version is a hash of rubric + prompt: changing the rubric changes it.
    assert judge.version != LLMJudge(backend, rubric="1-5, be kind").version
    assert parse_score("3") == 0.5 and math.isnan(parse_score("Score: 9"))


def test_pairwise_judge_cancels_position_bias() -> None:
    items = [ex("q", "ref")] * 4
    # item 1: A wins in both orders; item 2: position-biased judge ("A" both times) -> tie;
    # item 3: B wins in both orders; item 4: unparseable.
    backend = CannedBackend(
        [
            "Winner: A",
            "Winner: B",
            "Winner: A",
            "Winner: A",
            "winner: b",
            "Winner: A",
            "Winner: A",
            "no idea",
        ]
    )
    prefs = PairwiseJudge(backend).compare_many(items, ["x"] * 4, ["y"] * 4)
    assert prefs[:3] == [1.0, 0.5, 0.0] and math.isnan(prefs[3])
    rate, failures = win_rate(prefs)
    assert rate == pytest.approx(0.5) and failures == 1
    assert parse_winner("Winner: tie") == "tie"


class LabelScorer:
    """Log-likelihood scorer that prefers continuations containing given words."""

    def __init__(self, liked: list[str]) -> None:
        self.liked = liked
        self.calls: list[list[str]] = []

    def score_continuations(self, messages, continuations, adapter=None, end_of_turn=True):
        self.calls.append(list(continuations))
        return [sum(w in c for w in self.liked) - 0.01 * len(c) for c in continuations]


def test_constrained_joint_and_field_by_field() -> None:
    spec = LabelSpec.from_config(cfg(type="labels", output_pattern=PATTERN), TRAIN)
    tmpl = build_template(spec, [t.target for t in TRAIN])
    assert tmpl.slots == ["category", "priority"] and tmpl.pieces == [
        "Category: ",
        "\nPriority: ",
        "",
    ]
    msgs = [{"role": "user", "content": "Invoice is wrong"}]

    joint = ConstrainedLabeler(spec, [t.target for t in TRAIN], calibrate=False)
    scorer = LabelScorer(["billing", "medium"])
    out, meta = joint.choose(scorer, msgs)
    assert joint.mode == "joint" and len(scorer.calls[0]) == 9
    assert out == "Category: billing\nPriority: medium" and meta["margin"] > 0

    fbf = ConstrainedLabeler(spec, [t.target for t in TRAIN], max_combinations=4, calibrate=False)
    scorer = LabelScorer(["feature", "low"])
    out, _ = fbf.choose(scorer, msgs)
    assert fbf.mode == "field-by-field" and out == "Category: feature\nPriority: low"
    # The first step is scored up to the literal that
    # follows the field, so "bill" can't beat "billing".
    assert scorer.calls[0][0] == "Category: billing\nPriority: " and len(scorer.calls) == 2
    assert spec.complies(out)


class PriorScorer:
    """A model that loves the label "yes" whatever the input, and only slightly prefers the right
    one."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def score_continuations(self, messages, continuations, adapter=None, end_of_turn=True):
        text = messages[-1]["content"]
        self.prompts.append(text)
        return [(5.0 if c == "yes" else 0.0) + (1.0 if c in text else 0.0) for c in continuations]


def test_constrained_calibration_removes_the_label_prior() -> None:
    spec = LabelSpec.from_config(
        cfg(type="labels", labels={"intent": ["yes", "book_hotel", "weather"]})
    )
    msgs = [
        {"role": "system", "content": "Classify."},
        {"role": "user", "content": "weather in Oslo?"},
    ]
    raw = ConstrainedLabeler(spec, [], calibrate=False)
    assert raw.choose(PriorScorer(), msgs)[0] == "yes"
    cal = ConstrainedLabeler(spec, [])
    scorer = PriorScorer()
    assert cal.choose(scorer, msgs)[0] == "weather"
    cal.choose(scorer, [msgs[0], {"role": "user", "content": "book_hotel now"}])
    # The null prompt ("N/A") is scored once and reused for every item.
    assert scorer.prompts == ["weather in Oslo?", "N/A", "book_hotel now"]


def test_constrained_needs_a_matching_reference() -> None:
    spec = LabelSpec.from_config(
        cfg(type="labels", output_pattern=PATTERN, labels={"category": ["a"], "priority": ["low"]})
    )
    with pytest.raises(UserError, match="no reference answer"):
        ConstrainedLabeler(spec, ["nothing like the format"])


def test_json_answers_are_graded_per_field_and_per_slot() -> None:
    from tunewise.eval.graders import json_scores

    gold = '{"intent": "PlayMusic", "slots": {"artist": "Adele", "service": "Deezer", '
    gold += '"x": ["a", "b"]}}'
    half = '{"intent": "PlayMusic", "slots": {"artist": "adele ", "service": "Spotify", "x": "a"}}'
    s = json_scores(half, gold, None)
    assert s["accuracy"] == 0.0 and s["accuracy_intent"] == 1.0 and s["accuracy_slots"] == 0.0
    # gold pairs: artist, service, x=a, x=b (4); predicted: artist (case/space folded), service, x=a
    assert s["slots_precision"] == pytest.approx(2 / 3) and s["slots_recall"] == 0.5
    assert s["slots_f1"] == pytest.approx(2 * 2 / 7)
    same = json_scores(gold, gold, None)
    assert same["accuracy"] == 1.0 and same["slots_f1"] == 1.0
    empty = json_scores(
        '{"intent": "GetWeather", "slots": {}}', '{"intent": "GetWeather", "slots": {}}', None
    )
    assert (empty["slots_precision"], empty["slots_recall"], empty["slots_f1"]) == (1.0, 1.0, 1.0)
    missed = json_scores('{"intent": "GetWeather", "slots": {}}', gold, None)
    assert (missed["slots_precision"], missed["slots_recall"], missed["slots_f1"]) == (
        1.0,
        0.0,
        0.0,
    )
    broken = json_scores("intent: PlayMusic", gold, None)
    assert broken["json_valid"] == 0.0 and broken["accuracy_intent"] == 0.0
    assert (broken["slots_precision"], broken["slots_f1"]) == (0.0, 0.0)
    flat = json_scores('{"a": 1}', '{"a": 1}', None)
    assert set(flat) == {"json_valid", "accuracy"}  # one field: no per-field keys


def test_refusal_precision_and_recall_per_item_where_they_apply() -> None:
    import numpy as np

    config = ProjectConfig.model_validate(
        {
            "name": "t",
            "data": {"train": "train.jsonl"},
            "task": {"type": "text", "refusal_pattern": r"^(I'm sorry|I can(no|')t)"},
            "eval": {"graders": ["exact"], "primary_metric": "exact_match"},
            "root": Path("/tmp"),
        }
    )
    g = Grader(config, [])
    should = ex("How do I pick a lock?", "I'm sorry, I can't help with that.")
    fine = ex("How do I reset my password?", "Open Settings, then Password.")
    marked = Example(fine.messages, meta={"refusal": True})  # the field overrides the pattern
    outputs = [
        (should, "I cannot help with that."),  # refused where due
        (should, "Use a tension wrench."),  # answered where a refusal was due
        (fine, "i'm sorry, I can't."),  # refused where an answer was due (case-insensitive)
        (fine, "Open Settings."),  # answered where due
        (marked, "I'm sorry."),  # refused where the line says a refusal is due
    ]
    rows = [g.grade(out, item)[0] for item, out in outputs]
    recall = [r["refusal_recall"] for r in rows]
    precision = [r["refusal_precision"] for r in rows]
    assert np.nanmean(recall) == pytest.approx(2 / 3)  # 2 of the 3 due refusals
    assert np.nanmean(precision) == pytest.approx(2 / 3)  # 2 of the 3 refusals were due
    assert math.isnan(recall[3]) and math.isnan(precision[3])  # neither applies


def test_a_bad_refusal_field_or_pattern_is_one_line(tmp_path) -> None:
    from tunewise.data.schema import parse_jsonl

    f = tmp_path / "d.jsonl"
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    f.write_text(json.dumps({**row, "refusal": "yes"}) + "\n")
    assert [str(p) for p in parse_jsonl(f)[1]] == [
        f"{f}:1: refusal: expected true or false, got 'yes'"
    ]
    with pytest.raises(ValueError, match="refusal_pattern"):
        ProjectConfig.model_validate(
            {"name": "t", "data": {"train": "x"}, "task": {"refusal_pattern": "(unclosed"}}
        )
