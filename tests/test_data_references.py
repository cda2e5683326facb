"""Several references per input: the ``references`` field, one line per reference, and splits
that keep an input's references together."""

from __future__ import annotations

import json

import pytest

from tunewise.data.schema import (
    Example,
    expand_references,
    group_references,
    input_text,
    parse_jsonl,
)
from tunewise.data.split import split_examples


def _row(user: str, answer: str, **extra) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        **extra,
    }


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_the_references_field_is_read_and_checked_with_file_line_and_field(tmp_path):
    f = tmp_path / "d.jsonl"
    _write(
        f,
        [
            _row("a | b | c", "A is b of c.", references=["A's b is c.", "c is A's b."]),
            _row("x", "y", references="not a list"),
            _row("x", "y", references=["ok", 3, "  "]),
        ],
    )
    examples, problems = parse_jsonl(f)
    assert examples[0].references == ["A is b of c.", "A's b is c.", "c is A's b."]
    assert [str(p) for p in problems] == [
        f"{f}:2: references: expected a list of strings, got str",
        f"{f}:3: references[1]: expected a string, got int",
        f"{f}:3: references[2]: empty",
    ]


def test_lines_with_the_same_prompt_become_one_item_with_every_reference():
    rows = [
        _row("Cocum | food | English", "Cocum serves English food."),
        _row("other", "something"),
        _row("Cocum | food | English", "English food is served at Cocum."),
        _row("Cocum | food | English", "Cocum serves English food."),  # a repeat adds nothing
    ]
    items = group_references([Example(r["messages"]) for r in rows])
    assert [input_text(i) for i in items] == ["Cocum | food | English", "other"]
    assert items[0].references == ["Cocum serves English food.", "English food is served at Cocum."]
    assert items[1].references == ["something"]


def test_training_sees_each_reference_as_an_example():
    ex = Example(_row("q", "one")["messages"], meta={"references": ["two", "three"], "id": 7})
    out = expand_references([ex, Example(_row("p", "solo")["messages"])])
    assert [e.target for e in out] == ["one", "two", "three", "solo"]
    assert all("references" not in e.meta for e in out)
    assert out[1].meta == {"id": 7}
    assert all(input_text(e) == "q" for e in out[:3])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_reference_of_a_validation_input_is_never_in_train(seed):
    # DART/E2E style: one line per reference, 3 references for each of 60 inputs, so a split
    # that scattered lines would put some of an input's references on both sides.
    rows = [
        Example(
            _row(f"Venue{i} | area | riverside\nVenue{i} | food | Thai", f"ref {k} of {i}")[
                "messages"
            ]
        )
        for i in range(60)
        for k in range(3)
    ]
    parts, _ = split_examples(rows, val=0.2, test=0.2, seed=seed)
    seen = {s: {input_text(e) for e in parts[s]} for s in parts}
    assert seen["val"] and seen["test"]
    assert not seen["val"] & seen["train"]
    assert not seen["test"] & seen["train"]
    assert not seen["val"] & seen["test"]


def test_training_conversations_hold_every_reference(tmp_path):
    # The trainer's data: each reference of an input is a conversation of its own (val too, so
    # validation loss is measured on the same footing), with the project's system prompt.
    from tunewise.config import ProjectConfig
    from tunewise.train.phases import RunStart
    from tunewise.train.trainer import _conversations

    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    _write(train, [_row("q1", "a", references=["b", "c"]), _row("q2", "d")])
    _write(val, [_row("q3", "e", references=["f"])])
    cfg = ProjectConfig.model_validate(
        {
            "name": "t",
            "data": {"train": str(train)},
            "task": {"type": "text", "system_prompt": "Be brief."},
            "root": tmp_path,
        }
    )
    own, _, held, _, _ = _conversations(cfg, RunStart(tmp_path / "run", train, val))
    assert [e.target for e in own] == ["a", "b", "c", "d"]
    assert [e.target for e in held] == ["e", "f"]
    assert all(e.messages[0] == {"role": "system", "content": "Be brief."} for e in own + held)


def test_attribute_lists_are_compared_fact_by_fact():
    from tunewise.data.dedup import near_duplicate_clusters, normalize, structured_facts

    # Two E2E records of one venue (from DART): other food, area and family-friendliness. Over
    # words (the subject and keys repeated, few distinct values) they look alike; they share 4 of
    # 7 facts, so they are different inputs. A record that differs in one fact of seven is a
    # near-duplicate, and so is the same record written again.
    facts = [
        ("eatType", "coffee shop"),
        ("food", "English"),
        ("priceRange", "less than £20"),
        ("customer rating", "low"),
        ("area", "city centre"),
        ("familyFriendly", "no"),
        ("near", "The Sorrento"),
    ]

    def record(pairs):
        return "\n".join(f"Fitzbillies | {k} | {v}" for k, v in pairs)

    a = record(facts)
    other = record([*facts[:1], ("food", "Chinese"), *facts[2:4], ("area", "riverside"),
                    ("familyFriendly", "yes"), facts[6]])  # fmt: skip
    one_off = record([*facts[:6], ("near", "Café Rouge")])
    clusters = near_duplicate_clusters([a, other, one_off, a + "."])
    assert clusters[0] != clusters[1]
    assert clusters[0] == clusters[2] == clusters[3]
    head = ["subject_fitzbillies", "eattype_coffee_shop", "food_english"]
    assert normalize(a).split()[:3] == head
    e2e = "name[Alimentum], area[city centre], familyFriendly[no]"
    assert structured_facts(e2e) == "name_alimentum area_city_centre familyfriendly_no"
    # prose and one-line "key: value" text are compared over all their words, as before
    assert structured_facts("Subject: refund") is None
    assert structured_facts("Hi,\nthe app crashes on start.") is None
